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

"""The exception type of every data problem a user can cause.

A missing file, a bad JSON line, an unreadable vocabulary or a split with no
examples is the user's to fix, not a bug: the command-line layer catches
`DataError` and prints its message as one line, without a traceback. Each
message names the thing (file, line, field, task), its value and the option
that fixes it. `DataError` is a `ValueError`, so callers that catch
`ValueError` keep working; `MissingDataError` is also a `FileNotFoundError`.
"""


class DataError(ValueError):
  """A data problem the user can fix; the message says how."""


class MissingDataError(DataError, FileNotFoundError):
  """A data file or folder that does not exist."""
