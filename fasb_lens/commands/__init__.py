"""The ``fasb-lens`` commands, one module each: ``arguments(parser)`` and ``run(args)``.

A new command is one module here plus one line in :data:`fasb_lens.cli.COMMANDS`.
"""
