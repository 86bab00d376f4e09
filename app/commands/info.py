"""`python -m app info`: versions, the backend, the installed backends, the devices and, on
JAX, where the compiled programs are kept."""

from app import __version__
from app.commands.arguments import BACKEND, start_backend


def add_parser(commands):
    parser = commands.add_parser("info", parents=[BACKEND],
                                 help="Keras version, backend, installed backends and devices")
    parser.set_defaults(handler=handle)


def handle(arguments):
    start_backend(arguments.backend)
    import keras

    from app.backend import backend_versions, compilation_cache, installed_backends, list_devices

    versions = backend_versions()
    rows = [
        ("app", __version__),
        ("keras", keras.__version__),
        ("backend", keras.backend.backend()),
        ("installed", ", ".join(f"{name} {versions.get(name, '?')}"
                                for name in installed_backends())),
        ("devices", ", ".join(list_devices())),
    ]
    if keras.backend.backend() == "jax":
        cache = compilation_cache()
        rows.append(("compiled", f"{cache[0]} ({cache[1] / 2**20:.1f} MiB)" if cache
                     else "not kept on disk"))
    for label, value in rows:
        print(f"{label:<10} {value}")
    return 0
