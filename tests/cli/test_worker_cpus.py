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
