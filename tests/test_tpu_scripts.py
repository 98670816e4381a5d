"""tpu_scripts/ in --dry-run (the exact commands), their remote command run in a sandbox, SLURM launcher,
shellcheck, and cel_jax.scale.distributed's argument resolution (what is testable without several hosts)."""

import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import jax
import pytest

from cel_jax.scale import distributed

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tpu_scripts"
TPU = ["create.sh", "setup.sh", "run.sh", "logs.sh", "stop.sh", "delete.sh"]
ALL = [SCRIPTS / s for s in TPU] + [SCRIPTS / "slurm" / "launch.sh", SCRIPTS / "slurm" / "unlearn.sbatch"]
SLURM_ENV = dict(
    SLURM_JOB_ID="4242", SLURM_NTASKS="4", SLURM_STEP_NODELIST="gpu[007-008],cpu1", SLURM_NTASKS_PER_NODE="1"
)


@pytest.fixture
def env(tmp_path):
    """A clean environment whose PATH starts with stubs that record any real gcloud/srun/tar call."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for tool in ("gcloud", "srun", "scontrol", "tar", "sbatch"):
        (stubs / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> "{tmp_path}/called"\nexit 1\n')
        (stubs / tool).chmod(0o755)
    yield dict(
        PATH=f"{stubs}:{os.environ['PATH']}",
        HOME=str(tmp_path / "home"),
        USER="tester",
        PROJECT="proj-test",
        ZONE="us-west4-a",
        ACCELERATOR_TYPE="v5litepod-16",
        TPU_NAME="cel-test",
        BUCKET="bkt-test",
        RUN_NAME="run1",
    )
    assert not (tmp_path / "called").exists(), (tmp_path / "called").read_text()


def sh(script, *args, env, check=True):
    p = subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=60)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def flag(cmd: list[str], name: str) -> str:
    vals = [a.split("=", 1)[1] for a in cmd if a.startswith(f"--{name}=")]
    assert len(vals) == 1, (name, cmd)
    return vals[0]


def ssh_target(cmd):
    assert cmd[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and cmd[5] == "cel-test"
    assert flag(cmd, "project") == "proj-test" and flag(cmd, "zone") == "us-west4-a"
    return flag(cmd, "worker"), flag(cmd, "command")


# ---------------------------------------------------------------------------------------- scripts
@pytest.mark.parametrize("script", ALL, ids=lambda p: p.name)
def test_every_script_is_strict_and_has_dry_run(script):
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert os.access(script, os.X_OK)
    assert "--dry-run" in text


@pytest.mark.parametrize("script", TPU)
def test_tpu_scripts_dry_run_only_prints_gcloud(script, env):
    args = ["unlearn", "--config=c.py"] if script == "run.sh" else []
    cmds = commands(sh(SCRIPTS / script, "--dry-run", *args, env=env).stdout)
    assert cmds and all(c[0] in ("gcloud", "tar") for c in cmds)
    for c in cmds:  # every ssh/scp goes to all workers, except logs (worker 0)
        if c[3:5] in (["tpu-vm", "ssh"], ["tpu-vm", "scp"]):
            assert flag(c, "worker") == ("0" if script == "logs.sh" else "all")


def test_missing_project_is_a_clear_error(env):
    del env["PROJECT"]
    p = sh(SCRIPTS / "create.sh", "--dry-run", env=env, check=False)
    assert p.returncode != 0 and "PROJECT" in p.stderr


def test_create_direct_and_queued(env):
    (c,) = commands(sh(SCRIPTS / "create.sh", "--dry-run", env=env).stdout)
    assert c[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "cel-test"]
    assert flag(c, "accelerator-type") == "v5litepod-16" and flag(c, "version") == "v2-alpha-tpuv5-lite"
    assert "--spot" not in c
    env.update(QUEUED="1", SPOT="1", VALID_UNTIL="6h", ACCELERATOR_TYPE="v4-32", CREATE_BUCKET="1")
    b, q = commands(sh(SCRIPTS / "create.sh", "-n", env=env).stdout)
    assert b[:4] == ["gcloud", "storage", "buckets", "create"] and b[4] == "gs://bkt-test"
    assert q[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "cel-test-qr"]
    assert flag(q, "node-id") == "cel-test" and flag(q, "runtime-version") == "tpu-ubuntu2204-base"
    assert "--spot" in q and flag(q, "valid-until-duration") == "6h"


def test_setup_installs_one_pinned_version_everywhere(env):
    env.update(REPO_URL="https://github.com/org/cel_jax", CEL_JAX_REF="0123abc")
    cmds = commands(sh(SCRIPTS / "setup.sh", "--dry-run", env=env).stdout)
    ssh = [ssh_target(c) for c in cmds if c[4] == "ssh"]
    assert all(w == "all" for w, _ in ssh)
    install = [r for _, r in ssh if "uv pip install" in r]
    assert len(install) == 1 and '"cel_jax[tpu] @ git+https://github.com/org/cel_jax@0123abc"' in install[0]
    assert "--python 3.11" in install[0]
    scp = [c for c in cmds if c[4] == "scp"]
    assert len(scp) == 1 and scp[0][-5:-3] == [str(ROOT / "configs"), "cel-test:cel_jax/"]
    # data folders and a model prefetch on every worker, with the token passed through
    env.update(COPY_DIRS=str(ROOT / "tests"), PREFETCH_MODEL="org/model-8b", HF_TOKEN="tok en")
    cmds = commands(sh(SCRIPTS / "setup.sh", "--dry-run", env=env).stdout)
    assert [c[6] for c in cmds if c[4] == "scp"] == [str(ROOT / "configs"), str(ROOT / "tests")]
    (fetch,) = [ssh_target(c)[1] for c in cmds if "snapshot_download" in " ".join(c)]
    assert (
        fetch.startswith("export HF_HUB_ENABLE_HF_TRANSFER=0 'HF_TOKEN=tok en' && ")
        and "'org/model-8b'" in fetch
    )
    # without REPO_URL/CEL_JAX_VERSION: this working tree, tarred and copied to every worker
    for k in ("REPO_URL", "COPY_DIRS", "PREFETCH_MODEL"):
        del env[k]
    cmds = commands(sh(SCRIPTS / "setup.sh", "--dry-run", env=env).stdout)
    assert cmds[0][0] == "tar" and cmds[1][4] == "scp" and flag(cmds[1], "worker") == "all"
    assert any('"cel_jax[tpu] @ file://$HOME/cel_jax"' in ssh_target(c)[1] for c in cmds[2:])


def _run_remote(remote: str, home: Path, hostname: str) -> dict:
    """Execute run.sh's remote command in a sandbox HOME with a fake cel-jax that records argv and env."""
    (home / "cel_jax").mkdir(parents=True)
    (home / "cel_jax_venv" / "bin").mkdir(parents=True)
    fake = home / "cel_jax_venv" / "bin" / "cel-jax"
    fake.write_text(
        "#!/usr/bin/env python3\nimport json, os, sys\n"
        "json.dump({'argv': sys.argv[1:], 'cwd': os.getcwd(), 'env': dict(os.environ)},"
        f" open({str(home / 'out.json')!r}, 'w'))\n"
    )
    fake.chmod(0o755)
    bin_dir = home / "bin"
    bin_dir.mkdir()
    (bin_dir / "hostname").write_text(f"#!/bin/sh\necho {hostname}\n")
    (bin_dir / "hostname").chmod(0o755)
    env = dict(HOME=str(home), PATH=f"{bin_dir}:{os.environ['PATH']}")
    p = subprocess.run(["bash", "-c", remote], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"{hostname}: started run1"
    for _ in range(200):
        if (home / "out.json").exists() and (home / "cel_jax_logs" / "run.pid").exists():
            break
        time.sleep(0.05)
    time.sleep(0.1)
    out = json.loads((home / "out.json").read_text())
    assert (home / "cel_jax_logs" / "latest.log").resolve() == (home / "cel_jax_logs" / "run1.log")
    return out


def test_run_same_command_on_every_host_with_env_passed_through(env, tmp_path):
    env.update(
        XLA_FLAGS="--xla_a=1 --b='q' $NOT_EXPANDED", HF_TOKEN="", PASS_ENV="XLA_FLAGS HF_TOKEN UNSET_VAR"
    )
    args = [
        "unlearn",
        "--config=configs/tofu_llama3_1_8b.py",
        "--config.mesh.shape=(1,16,1)",
        "--config.x=a b",
    ]
    (cmd,) = commands(sh(SCRIPTS / "run.sh", "--dry-run", *args, env=env).stdout)
    worker, remote = ssh_target(cmd)
    assert worker == "all"  # one ssh: the same command line on every host, started at once
    assert "setsid nohup" in remote and "> ~/cel_jax_logs/run1.log 2>&1 < /dev/null &" in remote
    outs = [_run_remote(remote, tmp_path / h, h) for h in ("host-0", "host-1")]
    assert outs[0]["argv"] == outs[1]["argv"] == [*args, "--workdir=gs://bkt-test/cel_jax/run1"]
    for out, h in zip(outs, ("host-0", "host-1"), strict=True):
        assert out["cwd"] == str(tmp_path / h / "cel_jax")
        e = out["env"]
        assert e["XLA_FLAGS"] == "--xla_a=1 --b='q' $NOT_EXPANDED"  # verbatim, quotes and $ included
        assert e["HF_TOKEN"] == "" and "UNSET_VAR" not in e
        assert e["CEL_JAX_DISTRIBUTED"] == "auto" and e["PYTHONUNBUFFERED"] == "1"


def test_run_forwards_subcommand_config_and_workdir(env, tmp_path):
    (cmd,) = commands(
        sh(
            SCRIPTS / "run.sh", "-n", "eval", "--config=configs/eval/tofu.py", "--workdir=gs://w/x", env=env
        ).stdout
    )
    remote = ssh_target(cmd)[1]
    assert "cel-jax eval --config=configs/eval/tofu.py --workdir=gs://w/x >" in remote
    assert remote.count("--workdir") == 1


@pytest.mark.parametrize(
    "extra,args,msg",
    [
        ({}, ["unlearn"], "needs --config"),
        ({}, ["train", "--config=c.py"], "unknown command"),
        ({}, ["unlearn", "--config=c.py", "--workdir=/local"], "must be shared"),
        ({"BUCKET": ""}, ["unlearn", "--config=c.py"], "--workdir=gs://... or set BUCKET"),
        ({"ACCELERATOR_TYPE": "v9x-8"}, ["unlearn", "--config=c.py"], "unrecognised ACCELERATOR_TYPE"),
        ({"PASS_ENV": "BAD-NAME"}, ["unlearn", "--config=c.py"], "not a variable name"),
    ],
)
def test_run_rejects_bad_input(env, extra, args, msg):
    env.update(extra)
    p = sh(SCRIPTS / "run.sh", "--dry-run", *args, env=env, check=False)
    assert p.returncode != 0 and msg in p.stderr


def test_single_host_run_allows_local_workdir_and_skips_distributed(env):
    env["ACCELERATOR_TYPE"] = "v5litepod-8"
    (cmd,) = commands(
        sh(SCRIPTS / "run.sh", "-n", "finetune", "--config=c.py", "--workdir=/tmp/w", env=env).stdout
    )
    remote = ssh_target(cmd)[1]
    assert "CEL_JAX_DISTRIBUTED" not in remote and "--workdir=/tmp/w" in remote


def test_logs_stop_delete(env):
    env.pop("RUN_NAME")
    (c,) = commands(sh(SCRIPTS / "logs.sh", "-n", "--worker=all", "--lines=50", env=env).stdout)
    assert ssh_target(c) == ("all", "tail -n 50 -F ~/cel_jax_logs/latest.log")
    (c,) = commands(sh(SCRIPTS / "stop.sh", "-n", env=env).stdout)
    worker, remote = ssh_target(c)
    assert worker == "all" and "kill -TERM -- -$pid" in remote and "libtpu_lockfile" in remote
    (c,) = commands(sh(SCRIPTS / "delete.sh", "-n", env=env).stdout)
    assert c[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "cel-test"] and "--quiet" not in c
    env["QUEUED"] = "1"
    (c,) = commands(sh(SCRIPTS / "delete.sh", "-n", "--yes", env=env).stdout)
    assert c[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "cel-test-qr"]
    assert "--force" in c and "--quiet" in c


@pytest.mark.parametrize("acc", ["v4-8", "v4-32", "v5p-64", "v5litepod-8", "v5litepod-16", "v6e-64", "v3-32"])
def test_bash_and_python_agree_on_hosts_per_slice(acc):
    p = subprocess.run(
        ["bash", "-c", f'source "{SCRIPTS}/common.sh"; tpu_hosts {acc}'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(p.stdout) == distributed.tpu_hosts(acc)


# ------------------------------------------------------------------------------------------ SLURM
def test_sbatch_dry_run(env):
    p = sh(
        SCRIPTS / "slurm" / "unlearn.sbatch",
        "--dry-run",
        "--config=configs/x.py",
        "--workdir=/shared/w",
        env=env,
    )
    (c,) = commands(p.stdout)
    assert c[:2] == ["srun", "--kill-on-bad-exit=1"] and c[3] == str(SCRIPTS / "slurm" / "launch.sh")
    assert c[4:] == ["--dry-run", "unlearn", "--config=configs/x.py", "--workdir=/shared/w"]


def _launch(env, procid, localid=0, **extra):
    e = {**env, **SLURM_ENV, "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(localid), **extra}
    out = sh(
        SCRIPTS / "slurm" / "launch.sh", "--dry-run", "unlearn", "--config=c.py", "--config.a=(1,2)", env=e
    )
    lines = out.stdout.splitlines()
    exports = dict(shlex.split(ln[2:])[1].split("=", 1) for ln in lines if ln.startswith("+ export "))
    return exports, commands("\n".join(ln for ln in lines if not ln.startswith("+ export ")))


def test_launcher_sets_jax_distributed_per_process(env):
    runs = [_launch(env, i) for i in range(4)]
    assert all(cmds == [["cel-jax", "unlearn", "--config=c.py", "--config.a=(1,2)"]] for _, cmds in runs)
    for i, (exports, _) in enumerate(runs):
        port = 4242 % 4096 + 61440  # JAX's own choice for SLURM jobs
        assert exports == dict(
            CEL_JAX_COORDINATOR=f"gpu007:{port}", CEL_JAX_NUM_PROCESSES="4", CEL_JAX_PROCESS_ID=str(i)
        )
        # what cel_jax.scale.distributed makes of it (explicit variables win over SLURM's)
        assert distributed.resolve(None, env=exports) == dict(
            coordinator_address=f"gpu007:{port}", num_processes=4, process_id=i
        )
    exports, _ = _launch(env, 3, localid=1, SLURM_NTASKS_PER_NODE="2(x2)", CEL_JAX_COORDINATOR_PORT="1234")
    assert exports["CEL_JAX_LOCAL_DEVICE_IDS"] == "1" and exports["CEL_JAX_COORDINATOR"] == "gpu007:1234"
    assert distributed.resolve(None, env=exports)["local_device_ids"] == [1]


@pytest.mark.parametrize(
    "nodelist", ["node001", "node[001-004],b1", "gpu[12,14-15]", "r[1-2]-n[07,9]", "a,b[1-3]"]
)
def test_first_node_matches_jax_and_bash(env, nodelist, monkeypatch):
    from jax._src.clusters.slurm_cluster import SlurmCluster

    for k, v in dict(SLURM_ENV, SLURM_STEP_NODELIST=nodelist, SLURM_PROCID="0", SLURM_LOCALID="0").items():
        monkeypatch.setenv(k, v)
    ours = distributed.resolve(None, env=dict(os.environ))["coordinator_address"]
    if nodelist.count("[") <= 1:  # JAX's parser handles one bracket group
        assert ours == SlurmCluster.get_coordinator_address(None, None)
    exports, _ = _launch(env, 0, SLURM_STEP_NODELIST=nodelist)
    assert exports["CEL_JAX_COORDINATOR"] == ours
    assert distributed.first_slurm_host("r[1-2]-n[07,9],x") == "r1-n07"


# ------------------------------------------------------------------------------------- shellcheck
@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_clean():
    files = [*sorted(SCRIPTS.glob("*.sh")), *sorted((SCRIPTS / "slurm").iterdir())]
    p = subprocess.run(["shellcheck", "-x", *map(str, files)], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stdout


# ------------------------------------------------------------------------------------ distributed
@pytest.mark.parametrize(
    "environ,expected",
    [
        ({}, None),
        ({"TPU_WORKER_HOSTNAMES": "t-w-0"}, None),
        ({"TPU_WORKER_HOSTNAMES": "t-w-0,t-w-1"}, {}),
        ({"TPU_PROCESS_ADDRESSES": "a:8476,b:8476"}, {}),
        ({"TPU_ACCELERATOR_TYPE": "v4-32"}, {}),
        ({"TPU_ACCELERATOR_TYPE": "v5litepod-8"}, None),
        ({"TPU_ACCELERATOR_TYPE": "unknown-kind"}, None),
        ({"MEGASCALE_NUM_SLICES": "2"}, {}),
        ({"CEL_JAX_DISTRIBUTED": "auto"}, {}),
        ({"CEL_JAX_DISTRIBUTED": "off", "TPU_WORKER_HOSTNAMES": "a,b"}, None),
        ({"CEL_JAX_DISTRIBUTED": "off", "CEL_JAX_NUM_PROCESSES": "2"}, None),
        (
            {"CEL_JAX_COORDINATOR": "10.0.0.1:1234", "CEL_JAX_NUM_PROCESSES": "2", "CEL_JAX_PROCESS_ID": "1"},
            dict(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1),
        ),
        ({"CEL_JAX_COORDINATOR": "h:1", "CEL_JAX_NUM_PROCESSES": "1", "CEL_JAX_PROCESS_ID": "0"}, None),
        ({**SLURM_ENV, "SLURM_PROCID": "2", "SLURM_NTASKS": "1"}, None),
        (
            {**SLURM_ENV, "SLURM_PROCID": "2"},
            dict(coordinator_address=f"gpu007:{4242 % 4096 + 61440}", num_processes=4, process_id=2),
        ),
    ],
)
def test_resolve_from_environment(environ, expected):
    assert distributed.resolve(None, env=environ) == expected


def test_resolve_explicit_arguments_win():
    env = {"CEL_JAX_COORDINATOR": "env:1", "CEL_JAX_NUM_PROCESSES": "8", "CEL_JAX_PROCESS_ID": "0"}
    kw = dict(coordinator_address="cfg:2", num_processes=2, process_id=1)
    assert distributed.resolve(kw, env=env) == kw
    import ml_collections

    cfg = ml_collections.ConfigDict(dict(model=dict(x=1), distributed=dict(kw, local_device_ids="0,1")))
    assert distributed.resolve(cfg, env={}) == dict(kw, local_device_ids=[0, 1])
    assert distributed.resolve(cfg.distributed, env={}) == dict(kw, local_device_ids=[0, 1])  # as train.py
    from cel_jax.config_base import unlearn_config

    engine = unlearn_config()  # defaults "", 0, -1 mean unset: fall through to the environment
    assert distributed.resolve(engine, env=env)["coordinator_address"] == "env:1"
    assert distributed.resolve(engine.distributed, env=env)["coordinator_address"] == "env:1"
    assert distributed.resolve(engine.distributed, env={}) is None
    assert distributed.resolve(ml_collections.ConfigDict(dict(model=1)), env={}) is None


@pytest.mark.parametrize(
    "kw,environ,msg",
    [
        (dict(coordinator_address="h:1", num_processes=2), {}, "missing \\['process_id'\\]"),
        (
            dict(coordinator_address="h:1", num_processes=2, process_id=2),
            {},
            "not in \\[0, num_processes=2\\)",
        ),
        (dict(coordinator="h:1"), {}, "unknown jax.distributed argument"),
        (None, {"CEL_JAX_DISTRIBUTED": "maybe"}, "CEL_JAX_DISTRIBUTED='maybe'"),
        (None, {"SLURM_NTASKS": "2", "SLURM_PROCID": "0"}, "no SLURM_STEP_NODELIST"),
    ],
)
def test_resolve_rejects_bad_input(kw, environ, msg):
    with pytest.raises(ValueError, match=msg):
        distributed.resolve(kw, env=environ)


def test_maybe_initialize_is_idempotent(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: bool(calls))
    monkeypatch.setattr(distributed, "_STATE", {"done": False, "kwargs": None})
    for k in list(os.environ):
        if k.startswith(("CEL_JAX_", "SLURM_", "TPU_", "MEGASCALE_")) or k == "ACCELERATOR_TYPE":
            monkeypatch.delenv(k)
    kw = dict(coordinator_address="h:1", num_processes=2, process_id=0)
    assert distributed.maybe_initialize(kw) == kw
    assert distributed.maybe_initialize(kw) == kw
    assert calls == [kw]
    monkeypatch.setattr(distributed, "_STATE", {"done": False, "kwargs": None})
    assert distributed.maybe_initialize() is None and calls == [kw]  # single host: nothing to do
    assert distributed.is_main_process()
