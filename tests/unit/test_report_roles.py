"""The report's customer: the flag, else the `customer` role from `import calls --roles`, else who answers."""

import pandas as pd

from sdt_ray.report import ReportOptions, _customer


def call(speakers):
    return pd.DataFrame({"speaker": speakers})


def test_a_customer_role_wins_over_who_answers():
    # The customer rings and speaks first: "who answers" would name the agent.
    assert _customer(call(["customer", "agent", "customer"]), ReportOptions()) == "customer"


def test_without_roles_the_answering_speaker_is_the_customer():
    assert _customer(call(["ch0", "ch1", "ch0"]), ReportOptions()) == "ch1"


def test_the_flag_wins_over_everything():
    assert _customer(call(["customer", "agent"]), ReportOptions(customer="agent")) == "agent"
