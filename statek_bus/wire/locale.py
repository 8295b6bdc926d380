"""Locales: STATEK's ``LANG-COUNTRY`` codes, resolved and validated the same way everywhere.

A job's locale travels on the wire and in its record as the canonical string ``"EN-US"``;
:func:`resolve_locale` turns what a user passes (``"en-us"``, a :class:`StatekLocale`) into that
value, or raises :class:`UnknownLocaleError` (a 400 naming ``locale``) before anything is written.
The code tables are STATEK's: 35 ISO 639-1 languages and 55 ISO 3166-1 countries. The executor
uses :func:`get_language_rule` and :func:`get_language_hint` to steer the model's language.
"""

from __future__ import annotations

import enum
import functools

import msgspec

from statek_bus.wire.errors import BadRequestError

__all__ = [
    "StatekCountryCode",
    "StatekLangCode",
    "StatekLocale",
    "UnknownLocaleError",
    "get_language_hint",
    "get_language_rule",
    "resolve_locale",
]


class StatekLangCode(enum.StrEnum):
    """ISO 639-1 language codes STATEK supports."""

    AR = "AR"
    BG = "BG"
    CS = "CS"
    DA = "DA"
    DE = "DE"
    EL = "EL"
    EN = "EN"
    ES = "ES"
    ET = "ET"
    FI = "FI"
    FR = "FR"
    HE = "HE"
    HI = "HI"
    HR = "HR"
    HU = "HU"
    IT = "IT"
    JA = "JA"
    KO = "KO"
    LT = "LT"
    LV = "LV"
    NL = "NL"
    NO = "NO"
    PL = "PL"
    PT = "PT"
    RO = "RO"
    RU = "RU"
    SK = "SK"
    SL = "SL"
    SR = "SR"
    SV = "SV"
    TH = "TH"
    TR = "TR"
    UK = "UK"
    VI = "VI"
    ZH = "ZH"


class StatekCountryCode(enum.StrEnum):
    """ISO 3166-1 alpha-2 country codes STATEK supports."""

    AE = "AE"
    AR = "AR"
    AT = "AT"
    AU = "AU"
    BE = "BE"
    BG = "BG"
    BR = "BR"
    CA = "CA"
    CH = "CH"
    CL = "CL"
    CN = "CN"
    CO = "CO"
    CZ = "CZ"
    DE = "DE"
    DK = "DK"
    EE = "EE"
    EG = "EG"
    ES = "ES"
    FI = "FI"
    FR = "FR"
    GB = "GB"
    GR = "GR"
    HR = "HR"
    HU = "HU"
    ID = "ID"
    IE = "IE"
    IL = "IL"
    IN = "IN"
    IT = "IT"
    JP = "JP"
    KR = "KR"
    LT = "LT"
    LV = "LV"
    MX = "MX"
    MY = "MY"
    NL = "NL"
    NO = "NO"
    NZ = "NZ"
    PH = "PH"
    PL = "PL"
    PT = "PT"
    RO = "RO"
    RS = "RS"
    RU = "RU"
    SA = "SA"
    SE = "SE"
    SG = "SG"
    SI = "SI"
    SK = "SK"
    TH = "TH"
    TR = "TR"
    UA = "UA"
    US = "US"
    VN = "VN"
    ZA = "ZA"


class UnknownLocaleError(BadRequestError, ValueError):
    """A locale string that is malformed or names an unsupported language or country (400, ``locale``).

    It is also a ``ValueError``, as STATEK's ``resolve_locale`` errors are.
    """


class StatekLocale(msgspec.Struct, frozen=True):
    """A language plus a country, e.g. ``StatekLocale(StatekLangCode.EN, StatekCountryCode.US)``."""

    lang_code: StatekLangCode
    """The language the model answers in."""
    country_code: StatekCountryCode
    """The country (formats, spelling)."""

    @property
    def code(self) -> str:
        """The canonical ``LANG-COUNTRY`` string stored on jobs (``"EN-US"``)."""
        return f"{self.lang_code.value}-{self.country_code.value}"

    def __str__(self) -> str:
        return self.code


def resolve_locale(value: str | StatekLocale) -> StatekLocale:
    """Resolve ``"LANG-COUNTRY"`` (case-insensitive) or a :class:`StatekLocale` to a locale.

    Args:
        value: ``"PL-PL"``, ``"en-us"``... or a locale object (returned as it is).

    Raises:
        UnknownLocaleError: the string has no ``-`` or names an unsupported code; the message
            says which part is wrong and ``field`` is ``locale``.
    """
    if isinstance(value, StatekLocale):
        return value
    if not isinstance(value, str):
        raise UnknownLocaleError(
            f"locale must be a 'LANG-COUNTRY' string such as 'EN-US', not {type(value).__name__}",
            field="locale",
        )
    return _resolve(value.strip().upper())


@functools.lru_cache(maxsize=512)
def _resolve(key: str) -> StatekLocale:
    lang, sep, country = key.partition("-")
    if not sep:
        raise UnknownLocaleError(
            f"locale {key!r} is not of the form 'LANG-COUNTRY' (for example 'EN-US')", field="locale"
        )
    try:
        lang_code = StatekLangCode(lang)
    except ValueError:
        raise UnknownLocaleError(
            f"locale {key!r}: unknown language code {lang!r}; known: {', '.join(StatekLangCode)}",
            field="locale",
        ) from None
    try:
        country_code = StatekCountryCode(country)
    except ValueError:
        raise UnknownLocaleError(
            f"locale {key!r}: unknown country code {country!r}; known: {', '.join(StatekCountryCode)}",
            field="locale",
        ) from None
    return StatekLocale(lang_code, country_code)


_LANGUAGE_NAMES = {
    StatekLangCode.EN: "English",
    StatekLangCode.PL: "Polish",
    StatekLangCode.DE: "German",
    StatekLangCode.FR: "French",
    StatekLangCode.ES: "Spanish",
    StatekLangCode.IT: "Italian",
}

_LANGUAGE_HINTS = {
    StatekLangCode.EN: "REMEMBER: Respond exclusively in English",
    StatekLangCode.PL: "PAMIĘTAJ: Odpowiedz wyłącznie po polsku",
    StatekLangCode.DE: "ERINNERUNG: Antworte ausschließlich auf Deutsch",
    StatekLangCode.FR: "RAPPEL : Réponds uniquement en français",
    StatekLangCode.ES: "RECUERDA: Responde exclusivamente en español",
    StatekLangCode.IT: "RICORDA: Rispondi esclusivamente in italiano",
}


def get_language_rule(lang_code: StatekLangCode | str) -> str | None:
    """The language rule appended to the system prompt, or ``None`` for a language without one.

    As in STATEK, only EN, PL, DE, FR, ES and IT have a rule.
    """
    name = _LANGUAGE_NAMES.get(StatekLangCode(str(lang_code).upper())) if _known(lang_code) else None
    if name is None:
        return None
    return (
        f"CRITICAL LANGUAGE RULE: 1. Respond to the user exclusively in {name}. "
        f"2. Translate example text, tool names, parameter names and tool output into {name} "
        "before showing them to the user. 3. Examples or tool output written in another language "
        "never change the language of your user-facing response."
    )


def get_language_hint(lang_code: StatekLangCode | str) -> str | None:
    """The short reminder appended as `` (<hint>)`` to real user messages, or ``None``."""
    return _LANGUAGE_HINTS.get(StatekLangCode(str(lang_code).upper())) if _known(lang_code) else None


def _known(lang_code: StatekLangCode | str) -> bool:
    return str(lang_code).upper() in StatekLangCode.__members__
