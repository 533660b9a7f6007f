"""One module per backend; `..catalogue` lists them."""

from .bitsandbytes import BNB_4BIT, BNB_8BIT
from .gguf import GGUF_BACKEND
from .quanto import QUANTO
from .sdnq import SDNQ_BACKEND
from .torchao import TORCHAO

ALL_BACKENDS = (BNB_4BIT, BNB_8BIT, TORCHAO, QUANTO, GGUF_BACKEND, SDNQ_BACKEND)
