# The tvm-rpc service's interpreter (and the processes its server starts, which inherit its
# PYTHONPATH): PyTorch is not to be imported. tvm_ffi imports torch whenever it is installed
# (the venv has it for its users), which the RPC server, running the modules a host uploads with
# TVM's runtime, never uses: under QEMU TCG the import cost ~20 s per process; on a board,
# hundreds of MB of memory. `import torch` here raises ImportError, which tvm_ffi takes as
# "not installed".
import sys

sys.modules["torch"] = None  # type: ignore[assignment]
