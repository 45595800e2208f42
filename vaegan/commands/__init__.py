"""The ``vaegan`` subcommands, one module per group, each parser next to its handler.

Every module has ``register(sub)``, which adds its parsers to the top-level subparsers
with ``func`` set to the handler. Heavy imports (torch, grpc) happen inside handlers, so
``vaegan --help`` is instant and each extra's commands run without the others installed.
"""

from vaegan.commands import client, data, export, latent, serve, train

GROUPS = (data, train, export, serve, client, latent)
