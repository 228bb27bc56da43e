"""The scripted content of the demo's workload: what customers of a telecom ask its support assistant
(billing, troubleshooting, engineer visits to book with a tool, order emails to extract, off-topic asks)
and the answer a good model gives.

Every generator takes a seeded `random.Random`, so the same seed always gives the same traffic.
"""

from __future__ import annotations

import datetime
import random
from typing import Any

__all__ = [
    "FAULTS",
    "SLOTS",
    "billing",
    "engineer_visit",
    "order_email",
    "out_of_scope",
    "troubleshooting",
    "visit_day",
]

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


def billing(rng: random.Random, long: bool) -> tuple[str, str]:
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
        inv, paid, date = f"INV-{rng.randint(100000, 999999)}", _money(price), _date(rng)
        ref = f"RF{rng.randint(10000, 99999)}"
        question = f"I was charged twice for invoice {inv} ({paid}) on {date}. Can you refund one of them?"
        answer = (
            f"I can see two payments of {paid} against invoice {inv} on {date}. The second one is a "
            f"duplicate, so I've requested a refund of {paid} to the card it came from. Refunds reach "
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


def troubleshooting(rng: random.Random, long: bool) -> tuple[str, str]:
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


# The faults an engineer visit can be booked for (the booking tool's enum), as customers put them.
FAULTS = {
    "no_connection": "the broadband has had no connection at all since {day}",
    "slow_speed": "the broadband has crawled along at under 5 Mbps since {day}",
    "dropping": "the connection has dropped every few minutes since {day}",
    "no_dial_tone": "the landline has had no dial tone since {day}",
    "damaged_cable": "the cable from the pole to the house came down in the wind on {day}",
}
# The visit slots (the tool's enum), as customers ask for them.
SLOTS = {
    "morning": ("in the morning", "before noon", "first thing"),
    "afternoon": ("in the afternoon", "after lunch"),
    "evening": ("in the evening", "after work"),
}
_VISIT_MONTH = (2025, 3)


def visit_day(date: str) -> str:
    """`Thursday 13 March` for `2025-03-13`: a visit date as a customer writes it."""
    day = datetime.date.fromisoformat(date)
    return f"{day:%A} {day.day} {day:%B}"


def engineer_visit(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """A customer asking for an engineer visit, and the arguments a good model books it with."""
    account_id = f"NW{rng.randint(10_000_000, 99_999_999)}"
    fault = rng.choice(sorted(FAULTS))
    slot = rng.choice(sorted(SLOTS))
    year, month = _VISIT_MONTH
    date = datetime.date(year, month, rng.randint(17, 28)).isoformat()
    notify = rng.random() < 0.5
    since = rng.choice(["Monday", "the weekend", "last night", "Friday"])
    problem = FAULTS[fault].format(day=since)
    when = f"{visit_day(date)}, {rng.choice(SLOTS[slot])}"
    sms = (
        "Please text me when the engineer is on the way." if notify else "No need to text, I'm home all day."
    )
    question = rng.choice(
        [
            f"Hi, {problem} and your line test says the fault is outside my house. Can you book an "
            f"engineer for {when}? My account number is {account_id}. {sms}",
            f"Account {account_id}: {problem}. I've restarted the hub twice. Please send an engineer on "
            f"{when}. {sms}",
            f"I need an engineer visit: {problem}. I can do {when}. Account number {account_id}. {sms}",
        ]
    )
    arguments = {
        "account_id": account_id,
        "fault": fault,
        "date": date,
        "slot": slot,
        "notify_by_sms": notify,
    }
    return question, arguments


def order_email(rng: random.Random, long: bool) -> tuple[str, dict[str, Any]]:
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


def out_of_scope(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    topic, ask, elsewhere = rng.choice(_OFF_TOPIC)
    question = ask.format(n=rng.randint(2, 9))
    answer = (
        f"I'm sorry, but I can't help with {topic}: I can only help with your Northwind account, bills, "
        "devices and service. Is there anything about those I can do for you?"
    )
    return question, answer, {"topic": topic, "elsewhere": elsewhere}
