"""The router's model list while an alias moves: serving workers' names win over a draining worker's."""

from __future__ import annotations

from services.common.pb import inference_pb2 as pb

from .conftest import router_over, until


async def test_an_alias_is_listed_under_the_serving_version_while_the_old_one_drains():
    async with router_over(2, {"models": ["standin"]}) as (stub, router, standins):
        standins[0].servicer.models = ["v1", "standin"]
        standins[1].servicer.models = ["v3", "standin"]
        pool = router.servicer.pool
        await until(lambda: {w.models for w in pool.workers.values()} == {("v1", "standin"), ("v3", "standin")})

        def parent() -> str:
            return {m.id: m.parent for m in router_models}["standin"]

        router_models = (await stub.ListModels(pb.ListModelsRequest(), timeout=5)).models
        assert parent() in {"v1", "v3"} and {"v1", "v3"} <= {m.id for m in router_models}
        standins[0].servicer.draining = True  # v1 drains (the promotion moved the alias to v3)
        await until(lambda: pool.workers[standins[0].address].load.draining)
        router_models = (await stub.ListModels(pb.ListModelsRequest(), timeout=5)).models
        assert parent() == "v3"
        standins[1].servicer.draining = True  # nobody serves it any more: the draining workers' names remain
        await until(lambda: pool.workers[standins[1].address].load.draining)
        router_models = (await stub.ListModels(pb.ListModelsRequest(), timeout=5)).models
        assert "standin" in {m.id for m in router_models}
