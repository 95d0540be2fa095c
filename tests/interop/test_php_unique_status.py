"""PHP's GearmanClient::jobStatusByUniqueKey() against farm's server and gearmand."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers.servers import need

pytestmark = pytest.mark.interop

# A GearmanClient for each question: after jobStatusByUniqueKey() the extension's later
# job submissions on that client time out (docs/server.md, PHP's extension).
PHP_CLIENT = """
function client() {{
    $c = new GearmanClient();
    $c->addServer("127.0.0.1", {port});
    $c->setTimeout(5000);
    return $c;
}}
client()->doBackground("dash", "payload", "-");
$fg = client();
$fg->addTask("dash", "other", null, "-");
$fg->setTimeout(300);
@$fg->runTasks();  // created, then its wait times out: its job stays, with a client
client()->doBackground("dash", "x", "lit");
foreach (["-", "payload", "lit"] as $key) {{
    echo $key, ":", json_encode(client()->jobStatusByUniqueKey($key)), "\\n";
}}
"""


def test_a_dash_job_is_not_found_by_the_unique_key_dash(any_server) -> None:
    # `-` means "the payload is the unique", so it names no one job: gearmand finds none by
    # it. farm answered for the newest `-` job, of whatever function and payload (here a
    # foreground one, with its client), as if the key were that job's.
    php = need("php")
    out = subprocess.run(
        [php, "-r", PHP_CLIENT.format(port=any_server.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout.splitlines() == [
        "-:[false,false,0,0]",
        "payload:[false,false,0,0]",
        "lit:[true,false,0,0]",
    ], out.stderr
