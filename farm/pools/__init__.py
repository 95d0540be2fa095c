"""What the supervisor (``farm/supervisor.py``) is made of, one seam a module.

slots        slots, the processes in them, and the one restart policy
record       each slot's shared-memory record, written by its worker
spawn        the one way to start a child: fork, settle it, exec
workerstart  a worker process started for its slot (Python or command), its pipes watched
lifecycle    a worker process's life: its timeouts, retire, kill, reap
commandstart when a command worker serves: its connections, local or remote
commandjobs  a command worker as the local server sees it (`peers`, `drain`)
rollout      `farm restart`: successors beside the old processes
steering     what changes while it runs: scale, ps, reload, restart requests
reloads      the latest reload's outcome, as the metrics read it
executorduties  farm.Executor's key and spill files, kept by the supervisor
workerproc   the entry point of one supervised worker process
localserver  the local job server child
control      the control socket the CLI speaks to
sdnotify     systemd's notify protocol and watchdog
readiness    what the supervisor's loop tells systemd: READY=1, STATUS=, the ping
metrics      the farm's /metrics endpoint
"""
