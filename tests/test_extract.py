"""Reading answers out of candidates for `vote`: the cases where wording differs and answers agree, or not."""

from __future__ import annotations

import pytest

from moa._stages.extract import extract

Q = "Is the capital of France Paris or Lyon?"
CASES = [
 ('No factor divides it, so yes','yesno','','yes'),
 ('No, because 91 = 7*13','yesno','','no'), ('Yes.','yesno','','yes'), ('yes','yesno','','yes'),
 ('Option A is wrong. Answer: C','choice','','C'),
 ('answer is a good question. Answer: D','choice','','D'),
 ('B','choice','','B'), ('(C) is right','choice','','C'),
 ('3/4','number','','0.75'), ('1/4','number','','0.25'),
 ('\u22123','number','','-3'), ('1\u202f000\u202f000','number','','1000000'),
 ('5km','number','','5'), ('5 km','number','','5'),
 ('Answer: 12\nI double-checked: the answer is consistent with all 3 constraints.','number','','12'),
 ('Paris, not Lyon.','phrase',Q,'paris not lyon'), ('Lyon, not Paris.','phrase',Q,'lyon not paris'),
 ('C','phrase','Which language?','c'), ('C++','phrase','Which language?','c++'), ('C#','phrase','Which language?','c#'),
 ('$18','phrase','How much?','18'), ('18 dollars','phrase','How much?','18'), ('18.00','phrase','','18'),
 ('She makes 18','phrase','How much does she make?','18'),
 ('Zu\u0308rich','phrase','','zürich'), ('Z\u00fcrich','phrase','','zürich'),
 ('The capital of France is Paris.','phrase','What is the capital of France?','paris'),
 ('Paris.','phrase','What is the capital of France?','paris'),
 ('It is 42.','number','','42'), ('6*7 gives 42','number','','42'), ('1,024 apples','number','','1024'),
 ('Step 1: 3+4=7\nStep 2: 7*2=14\nSo the answer is 14.','number','','14'),
 ('The answer is Paris.','phrase','What is the capital of France?','paris'),
 ('x = 3.5.', 'number','','3.5'), ('a1b2 then 7','number','','7'), ('It is -5 degrees','number','','-5'),
 ('1e3','number','','1000'), ('no number','number','',None), ('Answer: (B)','choice','','B'),
]  # fmt: skip


@pytest.mark.parametrize(("text", "how", "question", "expected"), CASES)
def test_extraction(text: str, how: str, question: str, expected: str | None) -> None:
    assert extract(text, how, question) == expected
