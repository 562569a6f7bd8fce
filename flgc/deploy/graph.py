"""Deployment of any network torch.fx traces (placeholder until the graph pass lands)."""


def deploy(model, input_size, batch_size, strategy, channels_last, device):
    return None
