"""Process limits both daemons raise when they start."""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one, and log it: the
    common soft limit of 1 024 is a few hundred sessions, open files or
    connections, while the hard limit is usually far higher. Returns the
    limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        log.info("open-file limit: %s (the hard limit)", _shown(soft))
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:  # a hard limit of "unlimited" the kernel will not take as a soft one
        log.warning("open-file limit stays at %s: cannot raise it to the hard limit %s (%s)", _shown(soft),
                    _shown(hard), exc)
        return soft
    log.info("open-file limit raised from %s to %s (the hard limit)", _shown(soft), _shown(hard))
    return hard


def _shown(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)
