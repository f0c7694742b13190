"""LightningDataModules: a shared base and one small file per dataset."""

from lit_lora.data.base import TextDataModule
from lit_lora.data.counselling import CounsellingDataModule
from lit_lora.data.ds1000 import DS1000DataModule
from lit_lora.data.instruction import InstructionDataModule
from lit_lora.data.nli import MultiNLIDataModule, SNLIDataModule
from lit_lora.data.nli_prompts import MultiNLILabelWordDataModule, SNLILabelWordDataModule
from lit_lora.data.python_codes import PythonCodesDataModule
from lit_lora.data.sft import SFTDataModule

__all__ = ["CounsellingDataModule", "DS1000DataModule", "InstructionDataModule", "MultiNLIDataModule",
           "MultiNLILabelWordDataModule", "PythonCodesDataModule", "SFTDataModule", "SNLIDataModule",
           "SNLILabelWordDataModule", "TextDataModule"]
