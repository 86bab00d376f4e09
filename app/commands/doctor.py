"""`python -m app doctor`: the debugging checklist (`app.doctor`), one line per check."""

from app.commands.arguments import BACKEND, CONFIGURED, prepare


def add_parser(commands):
    parser = commands.add_parser(
        "doctor", parents=[BACKEND, CONFIGURED], help="check the configured model before training",
        description="Initial loss against ln(classes), finite outputs, a gradient for every "
                    "variable, and overfitting one batch: a line with ✓ or ✗ each. Exits 1 if "
                    "a check fails.",
    )
    parser.set_defaults(handler=handle)


def handle(arguments):
    from app.doctor import format_checks, run_doctor

    checks = run_doctor(prepare(arguments))
    print(format_checks(checks))
    return 0 if all(check.ok for check in checks) else 1
