"""flowq-dispatcher: owns the dispatch stream's consumer group."""

from flowq.lifecycle import main as run


def main() -> None:
    from flowq_dispatcher.app import Dispatcher

    run("dispatcher", Dispatcher)


if __name__ == "__main__":
    main()
