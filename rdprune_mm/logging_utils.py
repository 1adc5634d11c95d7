"""Quieting the known, harmless warnings of the OpenMMLab stack.

Each filter names the warning's category, the module that issues it and the
start of its message, so any other warning still shows.
"""
import warnings

#: ``(category, module regex, message regex)`` of every known warning.
KNOWN_WARNINGS = (
    # spconv 2.3.8 indexes with a list of tensors, which torch deprecates
    (UserWarning, r'spconv\.pytorch\.core',
     r'Using a non-tuple sequence for multidimensional indexing'),
    # mmdet's samplers read their own deprecated properties
    (UserWarning, r'mmdet\.models\.task_modules\.samplers\.sampling_result',
     r'DeprecationWarning: (pos_|neg_)?bboxes is deprecated'),
)


def quiet_known_warnings() -> None:
    """Ignore the warnings in :data:`KNOWN_WARNINGS`, for the whole process.

    Idempotent: a filter that is there already is not added again.
    """
    for category, module, message in KNOWN_WARNINGS:
        warnings.filterwarnings('ignore',
                                message=message,
                                category=category,
                                module=module)
