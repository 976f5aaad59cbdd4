"""E-mail receiver: SMTP with STARTTLS and authentication, plain text + HTML.

Air-quality alerts carry the ISPU category in Indonesian and English with the
official colour (from the event's labels, else looked up by name in
``processors.ISPU_CATEGORIES``).
"""

from __future__ import annotations

import asyncio
import html
import smtplib
import ssl
from collections.abc import Mapping
from email.message import EmailMessage
from typing import Any

from alerts._config import EmailConfig
from alerts._receivers import _map_severity
from processors._indices import ISPU_CATEGORIES
from urbanpulse._errors import OutputError, RetryableOutputError

__all__ = ["EmailReceiver", "render_email"]

_BY_NAME = {c.name: c for c in ISPU_CATEGORIES}


def _category(ann: Mapping[str, str]) -> tuple[str, str, str] | None:
    """(Indonesian, English, colour) if the alert has an index category."""
    name = ann.get("category", "")
    if not name:
        return None
    known = _BY_NAME.get(name)
    name_en = ann.get("category_en") or (known.name_en if known else "")
    colour = ann.get("colour") or (known.colour if known else "")
    return name, name_en, colour


def _where(labels: Mapping[str, str]) -> str:
    parts = [labels.get("city", ""), labels.get("district", ""), labels.get("sensor_id", "")]
    return " / ".join(p for p in parts if p)


def render_email(
    payload: Mapping[str, Any], *, sender: str, recipients: tuple[str, ...]
) -> EmailMessage:
    alerts = list(payload["alerts"])
    firing = [a for a in alerts if a["status"] == "firing"]
    group = ", ".join(v for v in payload.get("groupLabels", {}).values() if v)
    status = str(payload["status"]).upper()
    count = len(firing) if firing else len(alerts)
    msg = EmailMessage()
    msg["Subject"] = f"[UrbanPulse {status}:{count}] {group}"
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    lines = [f"UrbanPulse: {status} ({count}) {group}", ""]
    rows = []
    for alert in alerts:
        labels, ann = alert["labels"], alert["annotations"]
        cat = _category(ann)
        cat_text = f" | ISPU {cat[0]} ({cat[1]}) {cat[2]}" if cat else ""
        lines.append(
            f"- [{alert['status']}] {labels.get('alertname', '')} {labels.get('severity', '')} "
            f"at {_where(labels)}: {ann.get('summary', '')}{cat_text}"
        )
        lines.append(
            f"  since {alert['startsAt']}"
            + (f", until {alert['endsAt']}" if alert["status"] == "resolved" else "")
        )
        if ann.get("acknowledged_by"):
            lines.append(f"  acknowledged by {ann['acknowledged_by']}")
        if cat:
            swatch = (
                f'<span style="display:inline-block;width:1em;height:1em;'
                f'background:{html.escape(cat[2])};border:1px solid #888"></span> '
                f"{html.escape(cat[0])} / {html.escape(cat[1])}"
            )
        else:
            swatch = ""
        rows.append(
            "<tr>"
            f"<td>{html.escape(alert['status'])}</td>"
            f"<td>{html.escape(labels.get('alertname', ''))}</td>"
            f"<td>{html.escape(labels.get('severity', ''))}</td>"
            f"<td>{html.escape(_where(labels))}</td>"
            f"<td>{html.escape(ann.get('summary', ''))}</td>"
            f"<td>{swatch}</td>"
            "</tr>"
        )
    msg.set_content("\n".join(lines) + "\n")
    msg.add_alternative(
        "<html><body>"
        f"<h3>UrbanPulse: {html.escape(status)} ({count}) {html.escape(group)}</h3>"
        '<table border="1" cellpadding="4" cellspacing="0">'
        "<tr><th>status</th><th>alert</th><th>severity</th><th>where</th>"
        "<th>summary</th><th>ISPU (Indonesia / English)</th></tr>"
        + "".join(rows)
        + "</table></body></html>",
        subtype="html",
    )
    return msg


class EmailReceiver:
    def __init__(self, config: EmailConfig) -> None:
        self.name = config.name
        self.config = config

    def _send_sync(self, msg: EmailMessage) -> None:
        cfg = self.config
        try:
            with smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s) as smtp:
                smtp.ehlo()
                if cfg.starttls:
                    ctx = ssl.create_default_context(cafile=cfg.ca_file or None)
                    smtp.starttls(context=ctx)
                    smtp.ehlo()
                if cfg.username:
                    smtp.login(cfg.username, cfg.password)
                smtp.send_message(msg)
        except (smtplib.SMTPAuthenticationError, smtplib.SMTPRecipientsRefused) as exc:
            raise OutputError(f"alert receiver {self.name}: {exc}") from exc
        except smtplib.SMTPResponseException as exc:
            if 400 <= exc.smtp_code < 500:
                raise RetryableOutputError(f"alert receiver {self.name}: {exc}") from exc
            raise OutputError(f"alert receiver {self.name}: {exc}") from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise RetryableOutputError(f"alert receiver {self.name}: {exc}") from exc

    async def send(self, payload: Mapping[str, Any]) -> None:
        mapped = _map_severity(payload, self.config.severity_map)
        msg = render_email(mapped, sender=self.config.sender, recipients=self.config.recipients)
        await asyncio.to_thread(self._send_sync, msg)
