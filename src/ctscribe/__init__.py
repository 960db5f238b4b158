"""ctscribe: fine-tune a Qwen vision-language model on MedTrinity-25M CT images and describe CT images
for clinicians (the supported base families: ``ctscribe.models``)."""

__version__ = "0.1.0"

# Every output that carries generated text carries this notice too, as a field of its own.
CLINICAL_NOTICE = (
    "ctscribe output is machine-generated to assist a qualified clinician. It is not a diagnosis "
    "and does not replace a clinician's reading of the images."
)
