// A function with an npm package: the weekday of an ISO date, and how far it is from another.
import { differenceInCalendarDays, format, parseISO } from "date-fns";

export function process(input) {
  const [date, since] = new TextDecoder().decode(input).split(" ");
  const when = parseISO(date);
  return `${format(when, "yyyy-MM-dd")} is a ${format(when, "EEEE")}, ${differenceInCalendarDays(when, parseISO(since))} days after ${since}`;
}
