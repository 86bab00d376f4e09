"""Core ML export of trained students (see the export issue); nothing is exported yet."""
