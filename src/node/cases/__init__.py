"""The case workflow of a node: the agreement's rules, the case journal and the case service.

* :mod:`~node.cases.records` — what a case knows of itself without its secrets (the summary,
  warnings, quota counts) and the sealed identity's encoding.
* :mod:`~node.cases.journal` — every case message sent or received, sealed under the case key,
  with its delivery state (the case's timeline).
* :mod:`~node.cases.rules` — the agreement's rules that need the node's own records, run by the
  case ledger (``node.case_ledger``) inside the transaction that moves the case: a received
  inquiry checked again, a received referral's quota count, a sent referral's quota slot.
* :mod:`~node.cases.commands` and :mod:`~node.cases.views` — what users ask and are shown (the
  case API's JSON bodies, from which its OpenAPI description is generated).
* :mod:`~node.cases.service` — :class:`~node.cases.service.CaseService`, every user action:
  access checks, the agreement's rules, the message sent through ``node.outgoing``, the audit.

This package imports nothing from ``node.api``; the API is a thin layer over the service.
"""
