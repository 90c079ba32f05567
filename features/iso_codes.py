"""ISO code lists used by the data contract: ISO 4217 currencies and ISO 3166-1 alpha-2 countries.

Sources
-------
- ISO 4217 "List One: currency, fund and precious metal codes" as maintained by SIX Financial
  Information (the ISO 4217 maintenance agency), amendments up to 2025 (XCG introduced, ZWG
  replacing ZWL, SLE replacing SLL, VED/VES, MRU, STN). Stored **lower-case**, as Stripe and the
  retryopt contract spell them (usd).
- ISO 3166-1 alpha-2 officially assigned codes (249 entries), as listed in the IANA time zone
  database file iso3166.tab (tzdata 2025). Stored **upper-case** (US).
"""

from __future__ import annotations

from typing import Final

_ISO_4217_ACTIVE = """
aed afn all amd aoa ars aud awg azn bam bbd bdt bgn bhd bif bmd bnd bob bov brl bsd btn bwp byn
bzd cad cdf che chf chw clf clp cny cop cou crc cuc cup cve czk djf dkk dop dzd egp ern etb eur
fjd fkp gbp gel ghs gip gmd gnf gtq gyd hkd hnl htg huf idr ils inr iqd irr isk jmd jod jpy kes
kgs khr kmf kpw krw kwd kyd kzt lak lbp lkr lrd lsl lyd mad mdl mga mkd mmk mnt mop mru mur mvr
mwk mxn mxv myr mzn nad ngn nio nok npr nzd omr pab pen pgk php pkr pln pyg qar ron rsd rub rwf
sar sbd scr sdg sek sgd shp sle sos srd ssp stn svc syp szl thb tjs tmt tnd top try ttd twd tzs
uah ugx usd usn uyi uyu uyw uzs ved ves vnd vuv wst xaf xag xau xba xbb xbc xbd xcd xcg xdr xof
xpd xpf xpt xsu xts xua xxx yer zar zmw zwg
"""

# Withdrawn recently but still present in payment histories of the last years; accepted so that
# historical exports validate: ANG (replaced by XCG, 2025), HRK (euro, 2023), SLL (SLE, 2024),
# ZWL (ZWG, 2024), VEF (VES, 2018), MRO (MRU, 2018), STD (STN, 2018).
_ISO_4217_RECENTLY_WITHDRAWN = "ang hrk sll zwl vef mro std"

CURRENCIES_ACTIVE: Final[frozenset[str]] = frozenset(_ISO_4217_ACTIVE.split())
"""ISO 4217 List One codes in use, lower-case."""

CURRENCIES: Final[frozenset[str]] = CURRENCIES_ACTIVE | frozenset(
    _ISO_4217_RECENTLY_WITHDRAWN.split()
)
"""Currency codes accepted by the contract: active ISO 4217 codes plus recently withdrawn ones."""

_ISO_3166_ALPHA_2 = """
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS
BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE
EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM
HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC
LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA
NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW
SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO
TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
"""

COUNTRIES_ISO: Final[frozenset[str]] = frozenset(_ISO_3166_ALPHA_2.split())
"""The 249 officially assigned ISO 3166-1 alpha-2 codes, upper-case."""

# XK (Kosovo) is a user-assigned code, not in ISO 3166-1, but card networks and Stripe report it
# as a card country, so the contract accepts it.
COUNTRIES: Final[frozenset[str]] = COUNTRIES_ISO | frozenset({"XK"})
"""Country codes accepted by the contract: ISO 3166-1 alpha-2 plus XK."""
