"""The demo's traffic and the scripted models that answer it.

A seeded, realistic mix of what a telecom support assistant sees (billing, troubleshooting, order emails
to extract into JSON, off-topic asks), each item with the answer a good model gives. The scripted
primary gives that answer; the scripted candidate gives it with the planted differences that the
scorers should find; the scripted judge compares two answers by their content. All three are SIMULATED.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import jsonschema

from shadowtap.request_text import last_user_text
from shadowtap.testing.upstreams import Policy, Reply, default_policy

SEGMENTS = ("billing", "troubleshooting", "extraction", "out_of_scope")
MIX = {"billing": 0.30, "troubleshooting": 0.25, "extraction": 0.25, "out_of_scope": 0.20}
STREAMED_SHARE = {"billing": 0.4, "troubleshooting": 0.6, "extraction": 0.0, "out_of_scope": 0.3}
LONG_SHARE = {"billing": 0.2, "troubleshooting": 0.3, "extraction": 0.4, "out_of_scope": 0.0}

# What the candidate gets wrong, and on what share of the segment's requests (chosen by a hash of the
# request text, so that every run with the same seed plants the same faults).
CANDIDATE_BILLING_REFUSAL_RATE = 0.30
CANDIDATE_SCHEMA_BREAK_RATE = 0.25

SUPPORT_SYSTEM = (
    "You are Northwind's customer support assistant. Help customers with their Northwind account, bills, "
    "payments, devices, broadband and mobile service. Be accurate and brief. Politely decline anything "
    "unrelated to Northwind."
)
EXTRACTION_SYSTEM = (
    "You read customer emails sent to orders@northwind.example and extract the request as JSON that "
    "matches the given schema exactly. Use only information in the email."
)

ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "customer_name": {"type": "string", "minLength": 1},
        "order_id": {"type": "string", "pattern": "^NW-[0-9]{6}$"},
        "action": {"type": "string", "enum": ["refund", "exchange", "cancel", "status", "address_change"]},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}},
                "required": ["sku", "quantity"],
                "additionalProperties": False,
            },
        },
        "urgent": {"type": "boolean"},
    },
    "required": ["customer_name", "order_id", "action", "items", "urgent"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "order_request", "schema": ORDER_SCHEMA, "strict": True},
}


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One request of the workload, and the answer a good model gives to it."""

    segment: str
    messages: tuple[dict[str, str], ...]
    answer: str
    stream: bool
    customer: str
    response_format: dict[str, Any] | None = None
    # What the answer was made from (the order in the email, the off-topic subject), for the candidate.
    facts: dict[str, Any] | None = None

    @property
    def question(self) -> str:
        return self.messages[-1]["content"]


# --------------------------------------------------------------------------------------------------
# Building the workload

_FIRST = (
    "Amira Ben Cohen Dana Elif Farid Grace Hiro Ines Jonas Kofi Lena Marek Nadia Omar Priya Rosa Sven "
    "Tariq Uma Wei Yusuf Zoe"
).split()
_LAST = (
    "Okafor Lindqvist Moreau Tanaka Novak Haddad Fischer Silva Kowalski Nakamura Petrov Byrne Costa Osei "
    "Meyer Ivanova Reyes Larsen"
).split()
_PLANS = {
    "Fibre 150": 32.0,
    "Fibre 500": 45.0,
    "Fibre 900": 60.0,
    "Mobile 20GB": 15.0,
    "Mobile Unlimited": 28.0,
}
_MONTHS = "January February March April May June July August September October November December".split()
_PHONES = ["Pixel 8", "iPhone 15", "Galaxy S24", "iPhone 13", "Galaxy A54", "Moto G84"]
_SKUS = ["RTR-AX3000", "RTR-AX6000", "MESH-NODE-2", "CBL-ETH-5M", "SIM-5G-NANO", "PWR-12V-2A", "ONT-GPON-1"]


def _money(value: float) -> str:
    return f"£{value:,.2f}"


def _date(rng: random.Random) -> str:
    return f"{rng.randint(1, 28)} {rng.choice(_MONTHS[:10])}"


def _name(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


def _billing(rng: random.Random, long: bool) -> tuple[str, str]:
    plan, price = rng.choice(list(_PLANS.items()))
    month = rng.choice(_MONTHS)
    if long:
        roaming = rng.choice([18.5, 24.0, 36.75, 52.25])
        days = int(roaming // 6) + 1
        inv = f"INV-{rng.randint(100000, 999999)}"
        lines = "\n".join(
            [
                f"Invoice {inv} — {month}",
                f"{plan} monthly charge ............ {_money(price)}",
                "Line rental ........................ £0.00",
                f"EU roaming day pass x{days} ............ {_money(roaming)}",
                "Premium-rate calls ................. £0.00",
                "Paper bill fee ..................... £1.50",
                f"VAT (20%) .......................... {_money((price + roaming + 1.5) * 0.2)}",
                f"Total due .......................... {_money((price + roaming + 1.5) * 1.2)}",
            ]
        )
        question = (
            f"I've pasted my {month} invoice below. I only went abroad for a long weekend, so which line "
            f"is the roaming and why is it so high?\n\n{lines}\n\nAlso what is the paper bill fee? I "
            "thought I had switched to paperless last year."
        )
        answer = (
            f"The roaming line is 'EU roaming day pass x{days}' ({_money(roaming)}): a day pass is charged "
            f"for each calendar day you used data or made calls abroad, so a long weekend that spans "
            f"{days} days counts as {days} passes. The £1.50 paper bill fee means paper bills were still "
            "switched on; I've switched your account to paperless and credited the £1.50, which will show "
            "on your next invoice. To cap roaming in future, turn on Roaming limit under Account → Mobile."
        )
        return question, answer
    kind = rng.randrange(8)
    if kind == 0:
        extra = rng.choice([4.5, 9.99, 12.0, 15.0])
        reason = rng.choice(
            ["late-payment fee for the previous invoice", "replacement SIM fee", "roaming day pass"]
        )
        question = (
            f"Why is my bill {_money(price + extra)} this month? My {plan} plan is {_money(price)} a "
            "month and I haven't changed anything."
        )
        answer = (
            f"Your {month} bill is {_money(price + extra)} because it includes a one-off {_money(extra)} "
            f"{reason} on top of your {plan} plan ({_money(price)}). You can see the line items under "
            f"Billing → Invoices → {month}. If you didn't expect the {reason}, reply here and I'll open a "
            "dispute; the charge is held while we review it, usually within 5 working days."
        )
    elif kind == 1:
        inv, amount, date = f"INV-{rng.randint(100000, 999999)}", _money(price), _date(rng)
        ref = f"RF{rng.randint(10000, 99999)}"
        question = f"I was charged twice for invoice {inv} ({amount}) on {date}. Can you refund one of them?"
        answer = (
            f"I can see two payments of {amount} against invoice {inv} on {date}. The second one is a "
            f"duplicate, so I've requested a refund of {amount} to the card it came from. Refunds reach "
            f"the card in 3–5 working days; you'll get an email with reference {ref} once it's issued."
        )
    elif kind == 2:
        last4 = rng.randint(1000, 9999)
        question = (
            f"How do I switch from paying by card to direct debit? My card ending {last4} expires next month."
        )
        answer = (
            "Go to Account → Payments → Payment method, choose Direct Debit and enter your bank's sort code "
            "and account number. The change applies from your next invoice; until then the card ending "
            f"{last4} stays on file, so the current bill is still collected from it. If the card expires "
            "first, we retry once the debit is set up, without a late fee."
        )
    elif kind == 3:
        year = rng.choice([2023, 2024, 2025])
        question = f"Can I get a copy of my invoice for {month} {year}? I need it for an expenses claim."
        answer = (
            f"Yes: under Billing → Invoices, open {month} {year} and choose Download PDF. The PDF shows "
            "your company name and VAT number if they are on the account. Invoices from the last 24 "
            "months are there; I can also email this one to the address on your account."
        )
    elif kind == 4:
        months_in = rng.randint(3, 20)
        fee = (24 - months_in) * price * 0.5
        question = (
            f"What's the early termination fee if I cancel my {plan} contract {months_in} months in? "
            "It's a 24-month contract."
        )
        answer = (
            f"Cancelling at month {months_in} of 24 costs half your monthly price for each remaining "
            f"month: {24 - months_in} × {_money(price)} × 50% = {_money(fee)}. If you're moving somewhere "
            "we can't serve, the fee is waived with proof of address. The final bill also includes "
            "usage up to the cancellation date."
        )
    elif kind == 5:
        new_plan, new_price = rng.choice(list(_PLANS.items()))
        d1 = rng.randint(5, 25)
        amount = price * d1 / 30 + new_price * (30 - d1) / 30
        question = (
            f"I moved from {plan} to {new_plan} on {_date(rng)}. Will I be billed pro-rata for the old plan?"
        )
        answer = (
            f"Yes. Your next invoice charges {plan} for {d1} days and {new_plan} for {30 - d1} days of "
            f"the billing period, {_money(amount)} in all, rather than two full months. The one-off "
            "plan-change fee is waived for upgrades, and both lines are itemised on the invoice."
        )
    elif kind == 6:
        last4, due = rng.randint(1000, 9999), _date(rng)
        question = f"My autopay failed with the card ending {last4}. When will my service be suspended?"
        answer = (
            f"Nothing is suspended. We retry the payment 3 days after the {due} due date and again 7 days "
            "later; service is only restricted 14 days after the due date. To avoid that, update the card "
            f"under Account → Payments or pay the {_money(price)} balance now. No late fee is charged if "
            "you pay within those 14 days."
        )
    else:
        phone, charges = rng.choice(_PHONES), rng.randint(1, 5)
        fee = rng.choice([6.0, 8.0, 9.5])
        question = (
            f"Why is there a device protection charge of {_money(fee)} on my bill? I never signed up for it."
        )
        answer = (
            f"Device protection was added with your {phone} order; it shows on the order summary. If you "
            f"didn't ask for it, I can remove it and refund the {charges} charge(s) so far "
            f"({_money(fee * charges)}); it stops from the next invoice. You can also cancel it any time "
            "under Account → Add-ons."
        )
    return question, answer


def _router_log(rng: random.Random) -> str:
    lines = []
    clock = rng.randint(0, 3000)
    for _ in range(rng.randint(28, 40)):
        clock += rng.randint(5, 90)
        hours, minutes, seconds = clock // 3600 % 24, clock // 60 % 60, clock % 60
        stamp = f"2025-03-{rng.randint(10, 12):02d} {hours:02d}:{minutes:02d}:{seconds:02d}"
        event = rng.choice(
            [
                "WAN: PPPoE session up, IP assigned",
                "DSL: line sync 67.2/19.9 Mbps",
                "WAN: LCP echo timeout (3/3), link down",
                "SYS: watchdog reset, rebooting",
                "WLAN: 5GHz channel 44 -> 100 (DFS radar detected)",
                "DHCP: lease renewed for 192.168.1.23",
                "TR-069: inform sent to ACS",
                "SYS: CPU temperature 91C, throttling",
            ]
        )
        lines.append(f"{stamp}  {event}")
    return "\n".join(lines)


def _troubleshooting(rng: random.Random, long: bool) -> tuple[str, str]:
    if long:
        question = (
            "My router keeps rebooting several times a day and every time the internet drops for a few "
            "minutes. I copied the system log from the admin page, can you tell what's going on?\n\n"
            f"{_router_log(rng)}\n\nIt's the white Northwind Hub 4 in a cupboard under the stairs."
        )
        answer = (
            "The log shows the hub overheating before each restart: 'CPU temperature 91C, throttling' is "
            "followed by 'watchdog reset, rebooting'. The line itself is fine (it re-syncs at 67 Mbps). "
            "1. Move the hub out of the cupboard onto an open shelf with a few centimetres of space around "
            "it. 2. Check the vents are free of dust. 3. Leave it for 24 hours. If it still reboots, the "
            "fan has likely failed: reply here and I'll send a replacement Hub 4 free of charge, usually "
            "next working day."
        )
        return question, answer
    kind = rng.randrange(5)
    if kind == 0:
        light, since = rng.choice(["WAN", "broadband", "internet"]), f"{rng.randint(6, 11)}am"
        color = rng.choice(["orange", "red"])
        question = (
            f"My router's {light} light is blinking {color} and the internet has been down since {since}. "
            "What should I do?"
        )
        answer = (
            f"A blinking {color} {light} light means the hub has no connection to our network. "
            "1. Check the grey cable from the wall socket to the hub's WAN port is pushed in at both ends. "
            "2. Turn the hub off at the wall for 30 seconds, then on, and wait 5 minutes. "
            f"3. If the light is still {color}, there may be an outage: I've checked and there's none "
            "reported for your postcode, so reply 'engineer' and I'll book a line test."
        )
    elif kind == 1:
        device = rng.choice(["laptop", "work laptop", "smart TV", "games console", "tablet"])
        minutes = rng.randint(2, 15)
        question = (
            f"Wi-Fi keeps dropping every {minutes} minutes on my {device}, but the wired connection on the "
            "desktop is fine."
        )
        answer = (
            f"If wired is fine, the drops are on the Wi-Fi side, usually interference or the {device} "
            "switching bands. 1. In the hub settings (192.168.1.1 → Wireless) turn on Smart Wi-Fi, which "
            "picks the least crowded channel. 2. On the device, forget the network and join again. "
            f"3. Update the {device}'s Wi-Fi driver or software. If it still drops, try it close to the "
            "hub: if it holds there, a mesh node would fix the coverage."
        )
    elif kind == 2:
        plan_speed = rng.choice([150, 500, 900])
        measured = rng.randint(plan_speed // 8, plan_speed // 3)
        question = f"Speed test shows {measured} Mbps but I pay for {plan_speed} Mbps. Why so slow?"
        answer = (
            f"{measured} Mbps on a {plan_speed} Mbps plan usually means the test ran over Wi-Fi. "
            "1. Run the test at speedtest.northwind.example on a device plugged into the hub by cable. "
            "2. Close other downloads and streaming while it runs. If the wired result is still under "
            f"{int(plan_speed * 0.8)} Mbps (our guaranteed minimum), reply with the result and I'll raise "
            "a speed fault; you can leave penalty-free if we can't fix it within 30 days."
        )
    elif kind == 3:
        phone = rng.choice(_PHONES)
        question = f"I can't receive calls on my {phone} since the last software update. Texts work fine."
        answer = (
            f"Calls failing while texts work after an update is usually the {phone}'s Wi-Fi Calling or "
            "VoLTE setting being reset. 1. Open Settings → Mobile network and turn VoLTE on. 2. Turn Wi-Fi "
            "Calling off and on again. 3. Restart the phone. If calls still don't come in, dial 150 from "
            "the phone so we can refresh your line's settings; it takes about 10 minutes."
        )
    else:
        days = rng.randint(2, 9)
        question = (
            f"Voicemail says my mailbox is full but I deleted everything {days} days ago. New messages "
            "still aren't saved."
        )
        answer = (
            "The mailbox counts deleted messages until you leave the menu properly. 1. Call 1571. "
            "2. Press 3 for saved messages and delete any that play. 3. Press * to return to the main "
            "menu and hang up only after 'goodbye'. If it still says full, I can reset the mailbox from "
            "here; that clears the greeting too, so you'd record it again."
        )
    return question, answer


def _order_email(rng: random.Random, long: bool) -> tuple[str, dict[str, Any]]:
    name = _name(rng)
    order_id = f"NW-{rng.randint(100000, 999999)}"
    action = rng.choice(["refund", "exchange", "cancel", "status", "address_change"])
    items = [
        {"sku": sku, "quantity": rng.randint(1, 3)} for sku in rng.sample(_SKUS, rng.choice([1, 1, 2, 3]))
    ]
    urgent = rng.random() < 0.3
    listed = ", ".join(f"{i['quantity']} x {i['sku']}" for i in items)
    ask = {
        "refund": f"I'd like a refund for {listed}, they arrived damaged.",
        "exchange": f"Please exchange {listed}, I ordered the wrong model.",
        "cancel": f"Please cancel the order ({listed}) before it ships.",
        "status": f"Where is my order? It has {listed} and the tracking hasn't moved in a week.",
        "address_change": f"I've moved; please send {listed} to my new address: 14 Harbour Row, Leith.",
    }[action]
    hurry = " I need this sorted by Friday, it's for my home office." if urgent else ""
    body = f"Hi,\n\nThis is {name} about order {order_id}. {ask}{hurry}\n\nThanks,\n{name.split()[0]}"
    if long:
        body += (
            f"\n\n-----Original message-----\nFrom: Northwind Orders\nSubject: Your order {order_id} "
            "has been dispatched\n\nThank you for shopping with Northwind. Your parcel is on its way with "
            "our courier and should arrive within 3-5 working days. You can track it from your account "
            "under Orders. If anything in your delivery is missing or damaged, reply to this email within "
            "30 days. Returns are free for 30 days from delivery; exchanges are subject to stock. This "
            "email and any attachments are confidential and intended solely for the addressee. If you "
            "have received it in error please notify the sender and delete it. Northwind Ltd, registered "
            "in Scotland, company number SC000000. Northwind will never ask for your password by email."
        )
    facts = {"customer_name": name, "order_id": order_id, "action": action, "items": items, "urgent": urgent}
    return body, facts


_OFF_TOPIC = [
    ("a lasagne recipe", "Can you give me a good lasagne recipe for {n} people?", "a recipe site"),
    ("homework", "Help me with my calculus homework: integrate x^{n} sin x.", "your course materials"),
    ("stock picks", "Which {n} tech stocks should I buy this year?", "a regulated financial adviser"),
    ("poems", "Write me a poem about my cat, who is {n} years old.", "a general-purpose assistant"),
    ("trip planning", "Plan a {n}-day trip to Lisbon for me, with restaurants.", "a travel site"),
    ("medical questions", "I've had a headache for {n} days, what medicine should I take?", "a pharmacist"),
    ("football results", "Who won the match last night? The score was {n}-1 at half time.", "a sports site"),
]


def _out_of_scope(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    topic, ask, elsewhere = rng.choice(_OFF_TOPIC)
    question = ask.format(n=rng.randint(2, 9))
    answer = (
        f"I'm sorry, but I can't help with {topic}: I can only help with your Northwind account, bills, "
        "devices and service. Is there anything about those I can do for you?"
    )
    return question, answer, {"topic": topic, "elsewhere": elsewhere}


def build_workload(n: int, seed: int) -> list[WorkItem]:
    """`n` requests in the standard mix, shuffled, the same for the same seed."""
    rng = random.Random(seed)
    counts = {s: round(n * share) for s, share in MIX.items()}
    counts["billing"] += n - sum(counts.values())
    items: list[WorkItem] = []
    for segment, count in counts.items():
        for _ in range(count):
            long = rng.random() < LONG_SHARE[segment]
            stream = rng.random() < STREAMED_SHARE[segment]
            customer = f"cust-{rng.randint(10000, 99999)}"
            if segment == "extraction":
                email, facts = _order_email(rng, long)
                messages = (
                    {"role": "system", "content": EXTRACTION_SYSTEM},
                    {"role": "user", "content": email},
                )
                items.append(
                    WorkItem(
                        segment, messages, json.dumps(facts), stream, customer, RESPONSE_FORMAT, facts=facts
                    )
                )
                continue
            facts: dict[str, Any] | None = None
            if segment == "out_of_scope":
                question, answer, facts = _out_of_scope(rng)
            else:
                make = _billing if segment == "billing" else _troubleshooting
                question, answer = make(rng, long)
            messages = ({"role": "system", "content": SUPPORT_SYSTEM}, {"role": "user", "content": question})
            items.append(WorkItem(segment, messages, answer, stream, customer, facts=facts))
    rng.shuffle(items)
    return items


# --------------------------------------------------------------------------------------------------
# The scripted models (SIMULATED)


def _fraction(seed: int, text: str, purpose: str) -> float:
    """A stable number in [0, 1) for this text: the same request always gets the same treatment."""
    digest = hashlib.sha256(f"{seed}|{purpose}|{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _index(items: list[WorkItem]) -> dict[str, WorkItem]:
    return {item.question: item for item in items}


def _planted(items: list[WorkItem], segment: str, share: float, seed: int, purpose: str) -> frozenset[str]:
    """The questions of `segment` that get a planted fault: `share` of its requests, chosen by hash."""
    counts = Counter(item.question for item in items if item.segment == segment)
    wanted = round(sum(counts.values()) * share)
    chosen: set[str] = set()
    taken = 0
    for question in sorted(counts, key=lambda q: _fraction(seed, q, purpose)):
        if taken >= wanted:
            break
        chosen.add(question)
        taken += counts[question]
    return frozenset(chosen)


_OPENERS = (
    "Thanks for reaching out! I'd be happy to help with that. ",
    "Great question, and thanks for getting in touch. Let me walk you through it. ",
    "Thank you for contacting Northwind support! Here's what's going on. ",
)
_CLOSERS = (
    " I hope this helps! If you have any other questions about your account, don't hesitate to ask.",
    " Please let me know if there's anything else I can help you with today; I'm always happy to help.",
    " I hope that clears things up. Have a wonderful day, and thank you for being a Northwind customer!",
)
_BILLING_REFUSALS = (
    "I'm sorry, but I can't help with questions about charges or payments. Please contact the billing "
    "department through the Northwind website, where a specialist will be able to look into this for you.",
    "I'm sorry, but I'm not able to discuss billing matters or make changes to payments. For anything "
    "related to invoices, refunds or charges, please reach out to our billing team directly.",
)


def _broken_extraction(facts: dict[str, Any], pick: float) -> str:
    """The candidate's planted schema breaks: the kinds a weaker model makes on structured output."""
    doc = json.loads(json.dumps(facts))
    if pick < 0.3:
        for item in doc["items"]:
            item["quantity"] = str(item["quantity"])
    elif pick < 0.5:
        doc["action"] = {"refund": "return", "exchange": "swap", "cancel": "cancellation"}.get(
            doc["action"], "other"
        )
    elif pick < 0.7:
        del doc["urgent"]
    elif pick < 0.85:
        doc["notes"] = "Customer seems frustrated; consider a goodwill gesture."
    else:
        return "Here is the extracted information from the email:\n\n" + json.dumps(doc, indent=2)
    return json.dumps(doc, indent=2)


def primary_policy(items: list[WorkItem], seed: int) -> Policy:
    """The production model: answers every request well, quickly."""
    index = _index(items)

    def policy(route: str, body: dict[str, Any]) -> Reply:
        item = index.get(last_user_text(body))
        if item is None:
            return default_policy(route, body)
        r = _fraction(seed, item.question, "primary-speed")
        return Reply(text=item.answer, ttft_s=0.08 + 0.12 * r, token_delay_s=0.004)

    return policy


def candidate_policy(items: list[WorkItem], seed: int) -> Policy:
    """The candidate: slower to first token, wordier, and with the planted regressions."""
    index = _index(items)
    refused = _planted(items, "billing", CANDIDATE_BILLING_REFUSAL_RATE, seed, "refuse")
    broken = _planted(items, "extraction", CANDIDATE_SCHEMA_BREAK_RATE, seed, "schema")

    def policy(route: str, body: dict[str, Any]) -> Reply:
        item = index.get(last_user_text(body))
        if item is None:
            return default_policy(route, body)
        q = item.question
        timing = {
            "ttft_s": 0.30 + 0.30 * _fraction(seed, q, "candidate-speed"),
            "token_delay_s": 0.008,
        }
        if item.segment == "extraction":
            assert item.facts is not None
            if q in broken:
                text = _broken_extraction(item.facts, _fraction(seed, q, "schema-kind"))
            else:
                text = json.dumps(item.facts, indent=2)
            return Reply(text=text, **timing)
        if item.segment == "out_of_scope":
            assert item.facts is not None
            topic, elsewhere = item.facts["topic"], item.facts["elsewhere"]
            text = (
                f"I'm sorry, but I'm not able to help with {topic}. As Northwind's support assistant, my "
                "scope is limited to questions about your account, billing, devices and service. I'd "
                f"recommend {elsewhere} for that. If there's anything related to your Northwind service "
                "that I can assist with, please let me know!"
            )
            return Reply(text=text, **timing)
        if item.segment == "billing" and q in refused:
            pick = int(_fraction(seed, q, "refusal-text") * len(_BILLING_REFUSALS))
            return Reply(text=_BILLING_REFUSALS[pick], **timing)
        pick = int(_fraction(seed, q, "padding") * len(_OPENERS))
        return Reply(text=_OPENERS[pick] + item.answer + _CLOSERS[pick], **timing)

    return policy


_SECTION = r"\[The Start of {name}\]\n(?P<body>.*?)\n\[The End of {name}\]"
_REFUSAL_OPENING = re.compile(
    r"\A\W*(?:I'?m sorry,? but|I am sorry,? but|sorry,? (?:but )?I|I (?:can(?:no|')t|am unable|'m unable|"
    r"'m not able|am not able))",
    re.IGNORECASE,
)
_REQUIRED_FORMAT = re.compile(r"\[required response format: (?P<format>.*)\]\s*\Z", re.DOTALL)
# An answer this many times longer than the other, saying no more, loses on conciseness.
VERBOSE_RATIO = 2.0


def _section(prompt: str, name: str) -> str:
    found = re.search(_SECTION.format(name=re.escape(name)), prompt, re.DOTALL)
    return found.group("body") if found else ""


def _format_problem(answer: str, fmt: dict[str, Any] | None) -> str | None:
    if fmt is None:
        return None
    try:
        document = json.loads(answer)
    except json.JSONDecodeError:
        return "is not the JSON that was asked for"
    schema = (fmt.get("json_schema") or {}).get("schema")
    if schema:
        error = next(jsonschema.Draft202012Validator(schema).iter_errors(document), None)
        if error is not None:
            return f"does not match the required schema ({error.message[:80]})"
    return None


def judge_verdict(prompt: str) -> dict[str, str]:
    """Which answer serves the request better, decided from the answers' content only."""
    request = _section(prompt, "Request")
    answers = {"A": _section(prompt, "Answer A"), "B": _section(prompt, "Answer B")}
    fmt = None
    found = _REQUIRED_FORMAT.search(request)
    if found:
        try:
            fmt = json.loads(found.group("format"))
        except json.JSONDecodeError:
            fmt = None
    problems = {label: _format_problem(text, fmt) for label, text in answers.items()}
    if bool(problems["A"]) != bool(problems["B"]):
        loser = "A" if problems["A"] else "B"
        winner = "B" if loser == "A" else "A"
        return {"winner": winner, "reason": f"Answer {loser} {problems[loser]}; answer {winner} is valid."}
    refused = {label: bool(_REFUSAL_OPENING.match(text)) for label, text in answers.items()}
    if refused["A"] != refused["B"]:
        loser = "A" if refused["A"] else "B"
        winner = "B" if loser == "A" else "A"
        return {
            "winner": winner,
            "reason": f"Answer {loser} declines a request that answer {winner} handles correctly.",
        }
    length = {label: max(1, len(text)) for label, text in answers.items()}
    longer, shorter = ("A", "B") if length["A"] > length["B"] else ("B", "A")
    if length[longer] / length[shorter] >= VERBOSE_RATIO:
        return {"winner": shorter, "reason": f"Both are correct; answer {longer} pads it with filler."}
    return {"winner": "tie", "reason": "Both answers are equally correct and helpful."}


def judge_policy() -> Policy:
    """A stand-in for an LLM judge: valid format beats invalid, answering beats refusing, concise wins."""

    def policy(route: str, body: dict[str, Any]) -> Reply:
        messages = body.get("messages") or []
        prompt = next(
            (m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"), ""
        )
        return Reply(text=json.dumps(judge_verdict(prompt or "")), ttft_s=0.005)

    return policy
