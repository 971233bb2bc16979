"""The shared generative models, one family per module, registered by name (see ``base``).

Every method on a dataset gets the same family and sizes, built by ``build(data, model_cfg)``:
``bernoulli_mlp`` (binary images), ``linear_gaussian`` (exact factor analysis), ``lstm_categorical``
(token sequences), ``conv_image`` (8-bit RGB images).
"""
from .base import FAMILIES, LOG_2PI, GenerativeModel, build, family_class, resolve_options  # noqa: F401
from .bernoulli_mlp import BernoulliMLP, BernoulliMLPOptions  # noqa: F401
from .conv_image import ConvImage, ConvImageOptions, log_prob_discretized  # noqa: F401
from .linear_gaussian import LinearGaussian, LinearGaussianOptions  # noqa: F401
from .lstm_categorical import LSTMCategorical, LSTMCategoricalOptions, SequenceEncoder  # noqa: F401
