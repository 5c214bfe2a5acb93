"""stop_service on a Ray this process did not start (a cluster): only the named
application goes; Serve, the cluster's other applications and Ray stay up."""

import pytest

pytestmark = pytest.mark.usefixtures("ray_local")


def test_stopping_on_a_cluster_deletes_only_the_named_application():
    import ray
    from ray import serve

    from dvamn.ray_setup import stop_service

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    def hello() -> str:
        return "hello"

    serve.run(hello.bind(), name="dvamn-stop-a", route_prefix="/stop-a")
    serve.run(hello.bind(), name="dvamn-stop-b", route_prefix="/stop-b")
    try:
        stop_service("dvamn-stop-a", own_ray=False)
        apps = serve.status().applications
        assert "dvamn-stop-a" not in apps
        assert apps["dvamn-stop-b"].status == "RUNNING"
        assert ray.is_initialized()
    finally:
        serve.delete("dvamn-stop-b")
