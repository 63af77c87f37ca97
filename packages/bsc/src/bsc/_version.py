__version__ = "0.1.0"
#: The bsc-native release this facade is built against; pinned with == in pyproject.toml.
NATIVE_VERSION = "0.1.0"
