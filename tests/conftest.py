import pytest
from helpers import write_tiny_cifar


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    return write_tiny_cifar(str(tmp_path_factory.mktemp("tiny_cifar")))
