from pydantic import BaseModel, ConfigDict, Field


class Settings(BaseModel):
    """The ``plugins.clinic_payments`` section of a site file."""

    model_config = ConfigDict(extra="forbid")
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$")
