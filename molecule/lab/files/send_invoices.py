"""Hand N invoice mails with a PDF attachment to the relay's SMTP intake, as an ERP would.

Runs on the lab's app host (python3 only): python3 send_invoices.py COUNT [FIRST_NUMBER]
"""

import smtplib
import sys
from email.message import EmailMessage

INTAKE = ("203.0.113.215", 2525)
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n" + b"%" * 20000


def invoice(number: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Billing <billing@example.test>"
    msg["Reply-To"] = "billing@example.test"
    msg["To"] = f"alice+inv{number}@customer.test"
    msg["Subject"] = f"Invoice {number:05d}"
    # the ERP's own reference: the relay strips it and puts it on every delivery event
    msg["X-Bulkrelay-Ref"] = f"INV-{number:05d}"
    msg.set_content(f"Dear customer,\n\nplease find invoice {number:05d} attached.\n")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename=f"invoice-{number:05d}.pdf")
    return msg


def main() -> None:
    count = int(sys.argv[1])
    first = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    with smtplib.SMTP(*INTAKE, timeout=60) as smtp:
        for number in range(first, first + count):
            smtp.send_message(invoice(number))
    print(f"handed {count} invoices to the intake at {INTAKE[0]}:{INTAKE[1]}")


if __name__ == "__main__":
    main()
