from pydantic import BaseModel, ConfigDict, Field


class Settings(BaseModel):
    """The ``plugins.ihs_scheduling`` section of a site file."""

    model_config = ConfigDict(extra="forbid")
    booking_window_days: int = Field(60, ge=1, le=365)
    cancel_notice_hours: int = Field(24, ge=0)
