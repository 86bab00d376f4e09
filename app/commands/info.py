"""`python -m app info`: versions, the backend, the installed backends and the devices."""

from app import __version__
from app.commands.arguments import BACKEND, start_backend


def add_parser(commands):
    parser = commands.add_parser("info", parents=[BACKEND],
                                 help="Keras version, backend, installed backends and devices")
    parser.set_defaults(handler=handle)


def handle(arguments):
    start_backend(arguments.backend)
    import keras

    from app.backend import backend_versions, installed_backends, list_devices

    versions = backend_versions()
    rows = [
        ("app", __version__),
        ("keras", keras.__version__),
        ("backend", keras.backend.backend()),
        ("installed", ", ".join(f"{name} {versions.get(name, '?')}"
                                for name in installed_backends())),
        ("devices", ", ".join(list_devices())),
    ]
    for label, value in rows:
        print(f"{label:<10} {value}")
    return 0
