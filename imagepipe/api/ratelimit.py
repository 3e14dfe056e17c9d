"""Rate limits kept in Valkey, so they hold across every API process: GCRA, one key a policy.

The generic cell rate algorithm keeps one number per owner and policy, the theoretical
arrival time (TAT): when the owner's whole quota is back. A charge of ``cost`` units under a
quota of ``q`` per ``w`` seconds moves it by ``cost * w / q``, and is allowed while TAT stays
within ``w`` of now: a burst of ``q`` at once, then ``q`` evenly over each ``w``. A refund
(a negative cost) moves it back, never before now. The key expires when TAT passes.

One Lua script checks and charges several policies at once, all or none, on Valkey's clock
(API hosts' clocks may drift; Valkey's is one). Its text is fixed: what a client sends
reaches it only as key names (digests, `keys.owner_limit`) and numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

# KEYS: one per policy. ARGV[1]: "1" charges only if every policy allows it, "0" regardless
# (refunds); then per key: window (ms), quota, cost. Returns allowed, then per key: units
# left, ms until the whole quota is back, ms until this charge would fit.
GCRA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local strict = ARGV[1] == '1'
local allowed = 1
local plans = {}
for i, key in ipairs(KEYS) do
  local window, quota = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
  local cost = tonumber(ARGV[3 * i + 1])
  local interval = window / quota
  local tat = math.max(tonumber(redis.call('GET', key) or '0'), now)
  local after = math.max(tat + cost * interval, now)
  if strict and after - now > window then allowed = 0 end
  plans[i] = {tat, after, interval, window, quota, cost}
end
local answer = {allowed}
for i, key in ipairs(KEYS) do
  local tat, after, interval, window, quota, cost = unpack(plans[i])
  if cost ~= 0 and (allowed == 1 or not strict) then
    tat = after
    if after > now then
      redis.call('SET', key, string.format('%.3f', after), 'PX', math.ceil(after - now))
    else
      redis.call('DEL', key)
    end
  end
  answer[#answer + 1] = math.min(quota, math.floor((now + window - tat) / interval + 0.001))
  answer[#answer + 1] = math.ceil(tat - now)
  answer[#answer + 1] = math.max(0, math.ceil(after - window - now))
end
return answer
"""


@dataclass(frozen=True)
class Rate:
    """``quota`` units every ``window_s`` seconds."""

    quota: int
    window_s: int


@dataclass(frozen=True)
class Charge:
    """``cost`` units against the policy ``name``, kept at ``key``."""

    name: str
    key: str
    rate: Rate
    cost: int


@dataclass(frozen=True)
class Standing:
    """A policy after a charge (or a look): what is left, and when more is."""

    remaining: int  # units available now
    reset_s: int  # seconds until the whole quota is back
    retry_s: int  # seconds until the charge would fit (0: it did)


def _seconds(ms: int) -> int:
    return -(-int(ms) // 1000)  # whole seconds, rounded up: never too early


class RateLimiter:
    """GCRA over Valkey: charge several policies at once, all or none."""

    def __init__(self, redis: Redis) -> None:
        self.script = redis.register_script(GCRA)  # EVALSHA, loaded again if Valkey forgot it

    async def charge(
        self, charges: list[Charge], strict: bool = True
    ) -> tuple[bool, dict[str, Standing]]:
        """Whether every policy allowed the charge (then all were charged; else none, unless
        ``strict`` is False), and each policy's standing after it, by name."""
        if not charges:
            return True, {}
        args: list[int | str] = ["1" if strict else "0"]
        for charge in charges:
            args += [charge.rate.window_s * 1000, charge.rate.quota, charge.cost]
        answer = [int(n) for n in await self.script(keys=[c.key for c in charges], args=args)]
        triples = [answer[i : i + 3] for i in range(1, len(answer), 3)]
        standings = {
            charge.name: Standing(left, _seconds(reset), _seconds(retry))
            for charge, (left, reset, retry) in zip(charges, triples, strict=True)
        }
        return answer[0] == 1, standings
