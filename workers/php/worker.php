<?php
# The seed's reverse worker, unchanged (docs/operations.md, "Command pools"):
# addServer() with no arguments connects to 127.0.0.1:4730, the default farm's server.
# Reverse Worker Code
$worker= new GearmanWorker();
$worker->addServer();
$worker->addFunction("reverse", "my_reverse_function");
while ($worker->work());

function my_reverse_function($job)
{
return strrev($job->workload());
}
