"""A plain numpy reference of one funding-env step, written from the module docstring's
mechanics (loops over slots and legs, float64), to compare with `FundingEnv.step_env`."""


from jaxtrade.envs.funding import N_OPEN, N_SLOTS, REWARD_SCALE, SIZES


def liquidation_price(side, entry, size, margin, mmr):
    """Where margin balance + unrealised PnL falls to the maintenance margin."""
    maintenance = size * entry * mmr
    return entry + (maintenance - margin) / size if side == "long" else \
        entry - (maintenance - margin) / size


def step(data, params, state, action):
    """state: dict of numpy values (slots as a list of dicts); returns (state', reward,
    flows). data, params: numpy views of FundingData / EnvParams."""
    t = state["t"]
    price, rate = data["price"], data["rate"]
    fee, slip, mmr = params["taker_fee"], params["slippage"], params["mmr"]
    cfg = state["config"]
    slots = [dict(s) for s in state["slots"]]
    cash = state["cash"]
    flows = dict(funding=0.0, price_pnl=0.0, fees=0.0, slippage=0.0, liquidation_loss=0.0,
                 liquidations=0)

    def close(s, hour):
        nonlocal cash
        for leg in ("long", "short"):
            if not s[f"alive_{leg}"]:
                continue
            ex = s[f"{leg}_ex"]
            mark = price[hour, s["symbol"], ex]
            if leg == "long":
                fill = mark * (1 - slip)
                pnl = s["size"] * (fill - s["entry_long"])
            else:
                fill = mark * (1 + slip)
                pnl = s["size"] * (s["entry_short"] - fill)
            f = fee * s["size"] * fill
            cash += s[f"margin_{leg}"] + pnl - f
            flows["fees"] += f
            flows["slippage"] += s["size"] * abs(fill - mark)
        s["open"] = s["alive_long"] = s["alive_short"] = False

    if 1 <= action <= N_OPEN:
        k, j = divmod(action - 1, len(SIZES))
        sym, lx, sx = (int(v) for v in data["top"][t, k])
        budget = cfg["utilisation"] * state["equity"] / cfg["max_positions"]
        margin = 0.5 * SIZES[j] * budget
        notional = margin * cfg["leverage"]
        fl, fs = price[t, sym, lx] * (1 + slip), price[t, sym, sx] * (1 - slip)
        size = notional / fl
        f = fee * size * (fl + fs)
        free = next(i for i, s in enumerate(slots) if not s["open"])
        slots[free] = dict(open=True, symbol=sym, long_ex=lx, short_ex=sx, size=size,
                           entry_long=fl, entry_short=fs, margin_long=margin,
                           margin_short=margin, alive_long=True, alive_short=True,
                           leverage=cfg["leverage"], funding=0.0, opened=state["step"])
        cash -= 2 * margin + f
        flows["fees"] += f
        flows["slippage"] += size * (fl - price[t, sym, lx]) + size * (price[t, sym, sx] - fs)
    elif action > N_OPEN:
        p = action - 1 - N_OPEN
        if slots[p]["open"]:
            close(slots[p], t)

    t1 = t + 1
    for s in slots:
        if not s["open"]:
            continue
        for leg, sign in (("long", 1.0), ("short", -1.0)):
            if not s[f"alive_{leg}"]:
                continue
            ex = s[f"{leg}_ex"]
            flows["price_pnl"] += sign * s["size"] * (price[t1, s["symbol"], ex]
                                                      - price[t, s["symbol"], ex])
            if data["settles"][t1, ex]:
                pay = s["size"] * price[t1, s["symbol"], ex] * rate[t, s["symbol"], ex]
                received = -pay if leg == "long" else pay
                s[f"margin_{leg}"] += received
                s["funding"] += received
                flows["funding"] += received
        for leg in ("long", "short"):
            if not s[f"alive_{leg}"]:
                continue
            mark = price[t1, s["symbol"], s[f"{leg}_ex"]]
            liq = liquidation_price(leg, s[f"entry_{leg}"], s["size"], s[f"margin_{leg}"], mmr)
            if (leg == "long" and mark <= liq) or (leg == "short" and mark >= liq):
                value = s[f"margin_{leg}"] + (s["size"] * (mark - s["entry_long"]) if leg == "long"
                                              else s["size"] * (s["entry_short"] - mark))
                flows["liquidation_loss"] += value
                flows["liquidations"] += 1
                s[f"alive_{leg}"] = False
        if not (s["alive_long"] or s["alive_short"]):
            s["open"] = False
    for s in slots:
        if not s["open"]:
            continue
        near = False
        for leg in ("long", "short"):
            if not s[f"alive_{leg}"]:
                continue
            mark = price[t1, s["symbol"], s[f"{leg}_ex"]]
            entry = s[f"entry_{leg}"]
            liq = liquidation_price(leg, entry, s["size"], s[f"margin_{leg}"], mmr)
            if leg == "long":
                near |= mark <= liq + cfg["buffer"] * entry
            else:
                near |= mark >= liq - cfg["buffer"] * entry
        if near or state["step"] + 1 >= params["episode_length"]:  # a stop, or the day ends
            close(s, t1)
    equity = cash
    for s in slots:
        if not s["open"]:
            continue
        if s["alive_long"]:
            equity += s["margin_long"] + s["size"] * (price[t1, s["symbol"], s["long_ex"]]
                                                     - s["entry_long"])
        if s["alive_short"]:
            equity += s["margin_short"] + s["size"] * (s["entry_short"]
                                                       - price[t1, s["symbol"], s["short_ex"]])
    reward = REWARD_SCALE * (equity - state["equity"]) \
        - params["liquidation_penalty"] * flows["liquidations"]
    new = dict(state, t=t1, step=state["step"] + 1, cash=cash, equity=equity, slots=slots,
               liquidations=state["liquidations"] + flows["liquidations"])
    assert len(slots) == N_SLOTS
    return new, reward, flows
