"""Split classifiers (device encoder / server trunk / head) for the model-inversion experiments.

`architectures.decoders` (attack decoders) is a separate module and deliberately not imported here.
"""
from .bottleneck import BottleneckSpec, parse_bottleneck
from .restore import architecture_record, channel_counts, load_split_state
from .split import ARCHITECTURES, SplitModel, build_split_model, max_cutlayer

__all__ = ["ARCHITECTURES", "SplitModel", "build_split_model", "max_cutlayer",
           "BottleneckSpec", "parse_bottleneck", "architecture_record", "channel_counts",
           "load_split_state"]
