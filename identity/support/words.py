"""The support console's own words (message domain ``console``, English and German): ``_``,
``ngettext`` (a count as ``%(num)d``) and ``lazy_gettext`` here translate through that catalog,
in the console's language. Mail the console sends to a person is in the hub's ``messages``
domain (``identity.i18n``)."""

from __future__ import annotations

from identity.i18n import console_gettext as _
from identity.i18n import console_lazy as lazy_gettext
from identity.i18n import console_ngettext as ngettext

__all__ = ["_", "lazy_gettext", "ngettext"]
