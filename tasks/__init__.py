# Copyright 2025 The ipo-md Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""The seqio tasks of ipo-md, registered on import (package `ipo_md_tasks`).

Importing this package registers every task with its default locations. Each
dataset has one registration function whose arguments are the knobs (data
locations, vocabulary, prefix); calling it again re-registers its tasks, and
gin files configure it (see `ipo_md.cli.data.register_tasks_from_gin`).
"""

from ipo_md_tasks.synthetic import register_synthetic_tasks
from ipo_md_tasks.tldr import register_tldr_tasks
from ipo_md_tasks.xsum import register_xsum_tasks

# Every registration function, in registration order.
REGISTER_FNS = (register_synthetic_tasks, register_tldr_tasks,
                register_xsum_tasks)

for _register in REGISTER_FNS:
  _register()
