<?php
# The seed's reverse worker, unchanged (docs/operations.md, "Command pools"):
# addServer() with no arguments connects to localhost:4730, the default farm's server.
# Reverse Worker Code
$worker= new GearmanWorker();
$worker->addServer();
$worker->addFunction("reverse", "my_reverse_function");
# work() returns false when the job server is gone and cannot be reached again
# (GEARMAN_COULD_NOT_CONNECT), which ends this loop and the worker: under `farm up` that
# is no crash (the supervisor starts it again once its server answers), but to keep the
# same process through a server restart, loop on while the server is only away
# (docs/operations.md, "Command pools"):
#   $transient = [GEARMAN_IO_WAIT, GEARMAN_NO_JOBS, GEARMAN_COULD_NOT_CONNECT];
#   while (@$worker->work() || in_array($worker->returnCode(), $transient, true)) {
#       if ($worker->returnCode() == GEARMAN_COULD_NOT_CONNECT) sleep(1);
#   }
while ($worker->work());

function my_reverse_function($job)
{
return strrev($job->workload());
}
