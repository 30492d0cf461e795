"""flowq-executor: runs tasks' steps under a fenced lease."""

from flowq.lifecycle import main as run


def main() -> None:
    from flowq_executor.app import Executor

    run("executor", Executor)


if __name__ == "__main__":
    main()
