"""Adapters that travel: the HF peft format (export, import, and reading peft folders directly in
:func:`peftlab.load_adapter`), a vLLM serving check, and merged export to a plain model folder."""

from peftlab.core.adapter_formats import register_adapter_format
from peftlab.interop import peft_methods as _peft_methods  # noqa: F401  (registers every converter)
from peftlab.interop.peft_format import (
    UnsupportedPeftAdapter,
    export_peft,
    import_peft,
    is_peft_document,
    read_peft_folder,
    supported_methods,
)

register_adapter_format("peft", is_peft_document, read_peft_folder)

__all__ = ["UnsupportedPeftAdapter", "export_peft", "import_peft", "read_peft_folder", "supported_methods"]
