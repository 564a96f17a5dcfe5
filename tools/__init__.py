"""Operator tools that talk to a running daemon over its control socket
(``fsrep-resync``, ``fsrep-move``); they never edit a store behind a
daemon's back."""
