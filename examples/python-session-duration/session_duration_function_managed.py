import pulsar
from fnhost import Function
import time

class SessionDurationFunctionManagedState(Function):
    def __init__(self):
        # State is managed by Pulsar, not local variables
        pass

    def process(self, input, context):
        data = input.decode('utf-8')
        try:
            import json
            record = json.loads(data)
            user_id = record.get('user_id')
            event_type = record.get('event_type')
            timestamp = record.get('timestamp')

            if not user_id or not event_type or timestamp is None:
                context.get_logger().warn(f"Skipping malformed record: {data}")
                return

            # Accessing state via context.state
            if event_type == 'login':
                context.state.put(user_id, str(timestamp)) # Store timestamp as string
                context.get_logger().info(f"User {user_id} logged in at {timestamp}")
            elif event_type == 'logout':
                login_timestamp_str = context.state.get(user_id)
                if login_timestamp_str:
                    login_timestamp = int(login_timestamp_str)
                    session_duration = timestamp - login_timestamp
                    context.get_logger().info(f"User {user_id} session duration: {session_duration} seconds")
                    # context.get_output_topic().publish(f"user:{user_id},duration:{session_duration}".encode('utf-8'))
                    context.state.delete(user_id) # Remove state for this user
                else:
                    context.get_logger().warn(f"User {user_id} logged out without a prior login.")
            else:
                pass

        except json.JSONDecodeError:
            context.get_logger().error(f"Failed to decode JSON: {data}")
        except Exception as e:
            context.get_logger().error(f"An error occurred: {e}")
