"""Thai dates for money: local time (UTC+7, no daylight saving), Buddhist-era years, fiscal years."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

BANGKOK = timezone(timedelta(hours=7), "ICT")
BE_OFFSET = 543


def local_date(at: datetime) -> date:
    """The calendar date in Thailand at the instant ``at``."""
    return at.astimezone(BANGKOK).date()


def fiscal_year(day: date) -> int:
    """The Thai government fiscal year (Buddhist era) of a date: FY 2570 runs 1 Oct 2026 to 30 Sep 2027."""
    return day.year + BE_OFFSET + (1 if day.month >= 10 else 0)


def fiscal_year_bounds(fy: int) -> tuple[date, date]:
    """First and last day of a fiscal year given in the Buddhist era."""
    start = date(fy - BE_OFFSET - 1, 10, 1)
    return start, date(fy - BE_OFFSET, 9, 30)


def thai_date(day: date) -> str:
    """A date as printed on Thai receipts: day/month/Buddhist-era year (20/11/2569)."""
    return f"{day.day}/{day.month}/{day.year + BE_OFFSET}"


def baht(satang: int) -> str:
    """An amount in satang written in baht with two decimals and thousands separators (1,234.50)."""
    sign = "-" if satang < 0 else ""
    whole, part = divmod(abs(satang), 100)
    return f"{sign}{whole:,}.{part:02d}"
