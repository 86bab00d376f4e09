"""`python -m app.tables`: prints the README's tables of schedules, optimizers and
architectures, generated from the tables themselves (a test keeps the README equal to them)."""

from app.tables.architectures import ARCHITECTURES
from app.tables.optimizers import OPTIMIZERS
from app.tables.schedules import SCHEDULES

for table in (SCHEDULES, OPTIMIZERS, ARCHITECTURES):
    print(table.markdown(), end="\n\n")
