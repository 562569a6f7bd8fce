import pytest
import torch
from helpers import Result, run_main, write_tiny_cifar


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    return write_tiny_cifar(str(tmp_path_factory.mktemp("tiny_cifar")))


@pytest.fixture
def call(capsys):
    """call(script, *argv): the entry point's main in this process; a Result with its exit code and output."""
    capsys.readouterr()
    threads = torch.get_num_threads()

    def run(script, *argv):
        code = run_main(script, *argv)
        return Result(code, capsys.readouterr())
    yield run
    torch.set_num_threads(threads)  # a `threads=N` key or --threads must not change the tests that follow
