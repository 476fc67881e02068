"""Rule-based report labeller (CheXpert behaviour) with vocabularies as data files.

>>> from cxr.labeler import Labeler
>>> Labeler("chexpert14").label("No pleural effusion.")["Pleural Effusion"]
0.0
"""

from cxr.labeler.context import ConText, VocabularyError
from cxr.labeler.labeler import Labeler, Mention, aggregate, extract_sections, split_sections, split_sentences
from cxr.labeler.vocabulary import PACKAGED, Vocabulary, load_vocabulary

__all__ = [
    "PACKAGED",
    "ConText",
    "Labeler",
    "Mention",
    "Vocabulary",
    "VocabularyError",
    "aggregate",
    "extract_sections",
    "load_vocabulary",
    "split_sections",
    "split_sentences",
]
