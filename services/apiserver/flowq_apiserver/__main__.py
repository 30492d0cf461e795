"""flowq-apiserver: gRPC flowq.v1.WorkflowService plus its REST gateway."""

from flowq.lifecycle import main as run


def main() -> None:
    from flowq_apiserver.app import ApiServer

    run("apiserver", ApiServer)


if __name__ == "__main__":
    main()
