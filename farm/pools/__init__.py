"""What the supervisor (``farm/supervisor.py``) is made of, one seam a module.

slots        slots, the processes in them, and the one restart policy
steering     what changes while it runs: scale, ps, reload (pool bookkeeping)
workerproc   the entry point of one supervised worker process
localserver  the local job server child
control      the control socket the CLI speaks to
sdnotify     systemd's notify protocol and watchdog
"""
