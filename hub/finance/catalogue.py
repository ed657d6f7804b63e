"""The fee catalogue: offices and the services citizens pay for, with amounts in satang, from a TOML file."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hub.errors import HubConfigError

PaymentMethod = Literal["cash", "promptpay"]

DEMO_FEES = Path(__file__).with_name("demo-fees.toml")


class Office(BaseModel):
    """A municipal office that issues receipts under its own number series."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name_th: str
    name_en: str
    receipt_prefix: Annotated[str, Field(pattern=r"^[A-Z0-9]{2,10}$")]


class Service(BaseModel):
    """A fee a citizen can pay at a kiosk."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{1,40}$")]
    name_th: str
    name_en: str
    amount_satang: Annotated[int, Field(gt=0, le=100_000_000)]
    offices: list[str] | None = None
    anonymous: bool = False
    methods: list[PaymentMethod] = Field(default_factory=lambda: list[PaymentMethod](("cash", "promptpay")))

    def offered_at(self, office: str) -> bool:
        """True when this service can be paid at ``office``."""
        return self.offices is None or office in self.offices


class Catalogue(BaseModel):
    """Offices and services of one municipality."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    municipality_th: str
    municipality_en: str
    offices: dict[str, Office]
    services: list[Service]

    @model_validator(mode="after")
    def _consistent(self) -> Catalogue:
        codes = [s.code for s in self.services]
        if len(codes) != len(set(codes)):
            raise ValueError("service codes must be unique")
        for s in self.services:
            unknown = set(s.offices or []) - set(self.offices)
            if unknown:
                raise ValueError(f"service {s.code!r} names unknown offices {sorted(unknown)}")
        return self

    def service(self, code: str) -> Service | None:
        """The service with this code."""
        return next((s for s in self.services if s.code == code), None)


def load_catalogue(path: Path) -> Catalogue:
    """Read and validate a fee catalogue; errors name the file and the key."""
    try:
        return Catalogue.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except OSError as err:
        raise HubConfigError(f"{path}: cannot read the fee catalogue: {err.strerror}") from err
    except tomllib.TOMLDecodeError as err:
        raise HubConfigError(f"{path}: not valid TOML: {err}") from err
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise HubConfigError(f"{path}: {problems}") from err
