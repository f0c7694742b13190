"""LightningDataModules: a shared base and one small file per dataset."""

from lit_lora.data.base import TextDataModule
from lit_lora.data.instruction import InstructionDataModule
from lit_lora.data.sft import SFTDataModule

__all__ = ["InstructionDataModule", "SFTDataModule", "TextDataModule"]
